package postgres

import (
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

const claimKeySQL = `
	INSERT INTO daemon_keys (key, node_id, claimed_at)
	VALUES ($1, $2, $3)
	ON CONFLICT DO NOTHING`

func (q *queries) ClaimPublicKey(ctx context.Context, key []byte, nodeID string, at time.Time) error {
	// Of two transactions claiming one key, the second waits for the first and then
	// inserts nothing (or the key, if the first rolled back): never a raised error.
	tag, err := q.db.Exec(ctx, claimKeySQL, bytesArg(key), nodeID, ts(at))
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrKeyInUse
	}
	if err != nil {
		return wrapf(err, "claim public key for %q", nodeID)
	}
	return nil
}

func (q *queries) KeyOwner(ctx context.Context, key []byte) (string, error) {
	var nodeID string
	err := q.db.QueryRow(ctx, `SELECT node_id FROM daemon_keys WHERE key = $1`, bytesArg(key)).Scan(&nodeID)
	if err != nil {
		return "", wrapf(err, "owner of public key")
	}
	return nodeID, nil
}

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
		bytesArg(d.PublicKey), bytesArg(d.PreviousPublicKey), ts(d.OverlapUntil), d.Status, d.SecurityContext,
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

const daemonColumns = `
	node_id, tenant_id, display_name, tags, os, hostname,
	public_key, previous_public_key, overlap_until, status, security_context,
	enrolled_at, key_rotated_at, last_seen_at, revoked_at,
	session_id, session_replica, session_since, security_context_version`

func scanDaemon(row pgx.Row) (store.Daemon, error) {
	var d store.Daemon
	err := row.Scan(&d.NodeID, &d.TenantID, &d.DisplayName, &d.Tags, &d.OS, &d.Hostname,
		bytesCol{&d.PublicKey}, bytesCol{&d.PreviousPublicKey}, timeCol{&d.OverlapUntil}, &d.Status, &d.SecurityContext,
		timeCol{&d.EnrolledAt}, timeCol{&d.KeyRotatedAt}, timeCol{&d.LastSeenAt}, timeCol{&d.RevokedAt},
		&d.SessionID, &d.SessionReplica, timeCol{&d.SessionSince}, &d.SecurityContextVersion)
	nonNilTags(&d.Tags)
	return d, err
}

func (q *queries) GetDaemon(ctx context.Context, nodeID string) (store.Daemon, error) {
	d, err := scanDaemon(q.db.QueryRow(ctx, `SELECT `+daemonColumns+` FROM edge_daemons WHERE node_id = $1`, nodeID))
	if err != nil {
		return store.Daemon{}, wrapf(err, "get daemon %q", nodeID)
	}
	return d, nil
}

func (q *queries) ListDaemons(ctx context.Context, f store.DaemonFilter) ([]store.Daemon, error) {
	query := `SELECT ` + daemonColumns + ` FROM edge_daemons`
	var args []any
	if f.TenantID != "" {
		query += ` WHERE tenant_id = $1`
		args = append(args, f.TenantID)
	}
	query += ` ORDER BY enrolled_at NULLS FIRST, node_id`
	rows, err := q.db.Query(ctx, query, args...)
	ds, err := collect(rows, err, scanDaemon)
	if err != nil {
		return nil, wrapf(err, "list daemons")
	}
	return ds, nil
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
	tag, err := q.db.Exec(ctx, swapKeySQL, bytesArg(newKey), bytesArg(oldKey), ts(overlapUntil), ts(at), nodeID)
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
		`SELECT public_key, status FROM edge_daemons WHERE node_id = $1`, nodeID).Scan(bytesCol{&current}, &status)
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

func (q *queries) RevokeDaemon(ctx context.Context, nodeID string, at time.Time) error {
	return q.updateDaemon(ctx, nodeID, "revoke daemon %q", `
		UPDATE edge_daemons SET status = 'revoked', revoked_at = coalesce(revoked_at, $1)
		WHERE node_id = $2`,
		ts(at), nodeID)
}

func (q *queries) DeleteDaemon(ctx context.Context, nodeID string) error {
	return q.updateDaemon(ctx, nodeID, "delete daemon %q", `DELETE FROM edge_daemons WHERE node_id = $1`, nodeID)
}

func (q *queries) UpdateDaemonTags(ctx context.Context, nodeID string, tags []string) error {
	return q.updateDaemon(ctx, nodeID, "update tags of daemon %q",
		`UPDATE edge_daemons SET tags = $1 WHERE node_id = $2`, tagsArg(tags), nodeID)
}

func (q *queries) SetDaemonSecurityContext(ctx context.Context, nodeID, name string) error {
	return q.updateDaemon(ctx, nodeID, "set security context of daemon %q",
		`UPDATE edge_daemons SET security_context = $1, security_context_version = security_context_version + 1 WHERE node_id = $2`, name, nodeID)
}

func (q *queries) OpenSession(ctx context.Context, nodeID, sessionID, replica string, at time.Time) error {
	return q.updateDaemon(ctx, nodeID, "open session of daemon %q", `
		UPDATE edge_daemons SET session_id = $1, session_replica = $2, session_since = $3
		WHERE node_id = $4`,
		sessionID, replica, ts(at), nodeID)
}

// updateDaemon runs a statement on one daemon's row; no row is ErrNotFound.
func (q *queries) updateDaemon(ctx context.Context, nodeID, what, query string, args ...any) error {
	tag, err := q.db.Exec(ctx, query, args...)
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, what, nodeID)
	}
	return nil
}

func (q *queries) CloseSession(ctx context.Context, nodeID, sessionID string) error {
	// Only the session that is still current: a stream replaced by a reconnect must not
	// clear its successor when it finally ends.
	_, err := q.db.Exec(ctx, `
		UPDATE edge_daemons SET session_id = '', session_replica = '', session_since = NULL
		WHERE node_id = $1 AND session_id = $2 AND session_id <> ''`,
		nodeID, sessionID)
	if err != nil {
		return wrapf(err, "close session of daemon %q", nodeID)
	}
	return nil
}

func (q *queries) CloseReplicaSessions(ctx context.Context, replica string) error {
	_, err := q.db.Exec(ctx, `
		UPDATE edge_daemons SET session_id = '', session_replica = '', session_since = NULL
		WHERE session_replica = $1 AND session_id <> ''`,
		replica)
	if err != nil {
		return wrapf(err, "close sessions of replica %q", replica)
	}
	return nil
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
