package postgres

import (
	"context"
	"slices"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

func (q *queries) InsertDaemon(ctx context.Context, d store.Daemon) error {
	if d.Status == "" {
		d.Status = store.DaemonActive
	}
	// FROM tenants: an unknown tenant inserts nothing instead of raising a
	// foreign-key violation. ON CONFLICT without a target covers both node_id and
	// public_key.
	tag, err := q.db.Exec(ctx, `
		INSERT INTO edge_daemons (
		    node_id, tenant_id, display_name, tags, os, hostname,
		    public_key, previous_public_key, overlap_until, status, security_context,
		    enrolled_at, key_rotated_at, last_seen_at, revoked_at,
		    session_id, session_replica, session_since)
		SELECT $1, tenants.id, $3, $4::text[], $5, $6,
		       $7::bytea, $8::bytea, $9::timestamptz, $10, $11,
		       $12::timestamptz, $13::timestamptz, $14::timestamptz, $15::timestamptz,
		       $16, $17, $18::timestamptz
		FROM tenants WHERE tenants.id = $2
		ON CONFLICT DO NOTHING`,
		d.NodeID, d.TenantID, d.DisplayName, tagsArg(d.Tags), d.OS, d.Hostname,
		sqlstore.Bytes(d.PublicKey), sqlstore.Bytes(d.PreviousPublicKey), ts(d.OverlapUntil), d.Status, d.SecurityContext,
		ts(d.EnrolledAt), ts(d.KeyRotatedAt), ts(d.LastSeenAt), ts(d.RevokedAt),
		d.SessionID, d.SessionReplica, ts(d.SessionSince))
	switch {
	case pgCode(err) == foreignKeyViolation: // the tenant vanished mid-statement
		return wrapf(store.ErrNotFound, "insert daemon %q: tenant %q", d.NodeID, d.TenantID)
	case err != nil:
		return wrapf(err, "insert daemon %q", d.NodeID)
	case tag.RowsAffected() == 1:
		return nil
	}
	// Nothing inserted: no tenant, or either unique column collided.
	var tenantExists, nodeExists bool
	err = q.db.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1),
		       EXISTS (SELECT 1 FROM edge_daemons WHERE node_id = $2)`,
		d.TenantID, d.NodeID).Scan(&tenantExists, &nodeExists)
	switch {
	case err != nil:
	case !tenantExists:
		return wrapf(store.ErrNotFound, "insert daemon %q: tenant %q", d.NodeID, d.TenantID)
	case nodeExists:
		err = store.ErrConflict
	default:
		err = store.ErrKeyInUse
	}
	return wrapf(err, "insert daemon %q", d.NodeID)
}

const swapKeySQL = `
	UPDATE edge_daemons
	SET public_key = $1, previous_public_key = $2, overlap_until = $3, key_rotated_at = $4
	WHERE node_id = $5
	  AND public_key = $2
	  AND status = 'active'
	  AND NOT EXISTS (SELECT 1 FROM edge_daemons AS holder WHERE holder.public_key = $1)`

func (q *queries) SwapDaemonKey(ctx context.Context, nodeID string, oldKey, newKey []byte, overlapUntil, at time.Time) error {
	// Racers for one daemon queue on its row lock; once the winner commits, each
	// re-checks public_key = oldKey against the new row and changes nothing. The NOT
	// EXISTS guard reports a key held by another daemon (or this one) as a lost swap
	// instead of raising a unique violation.
	tag, err := q.db.Exec(ctx, swapKeySQL, sqlstore.Bytes(newKey), sqlstore.Bytes(oldKey), ts(overlapUntil), ts(at), nodeID)
	switch {
	case pgCode(err) == uniqueViolation:
		// Another transaction installed newKey after this statement's snapshot. The
		// domain claims the key in daemon_keys first, which serializes such races
		// without an error; without that claim this transaction is now aborted.
		return wrapf(store.ErrKeyInUse, "swap key of daemon %q", nodeID)
	case err != nil:
		return wrapf(err, "swap key of daemon %q", nodeID)
	case tag.RowsAffected() == 1:
		return nil
	}
	// Lost: say why, in a new statement that sees the winner's commit.
	var current []byte
	var status string
	err = q.db.QueryRow(ctx,
		`SELECT public_key, status FROM edge_daemons WHERE node_id = $1`, nodeID).Scan(sqlstore.BytesCol{B: &current}, &status)
	switch {
	case err != nil:
	case status != store.DaemonActive:
		err = wrapf(store.ErrConflict, "daemon is %s", status)
	case string(current) != string(oldKey):
		err = wrapf(store.ErrConflict, "current key is not the old key")
	default:
		err = store.ErrKeyInUse
	}
	return wrapf(err, "swap key of daemon %q", nodeID)
}

func (q *queries) TouchLastSeen(ctx context.Context, seen map[string]time.Time) error {
	nodes := make([]string, 0, len(seen))
	for nodeID, t := range seen {
		if !t.IsZero() {
			nodes = append(nodes, nodeID)
		}
	}
	if len(nodes) == 0 {
		return nil
	}
	// Sorted, so that two overlapping batches (a node moving between replicas) tend
	// to lock rows in the same order instead of deadlocking.
	slices.Sort(nodes)
	times := make([]time.Time, len(nodes))
	for i, nodeID := range nodes {
		times[i] = seen[nodeID]
	}
	// One statement for the whole batch: unnest turns the two arrays into rows.
	_, err := q.db.Exec(ctx, `
		UPDATE edge_daemons AS d
		SET last_seen_at = seen.at
		FROM unnest($1::text[], $2::timestamptz[]) AS seen (node_id, at)
		WHERE d.node_id = seen.node_id
		  AND (d.last_seen_at IS NULL OR d.last_seen_at < seen.at)`,
		nodes, times)
	if err != nil {
		return wrapf(err, "touch last seen")
	}
	return nil
}
