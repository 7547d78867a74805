package sqlite

import (
	"context"
	"encoding/json"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

func (q *queries) InsertDaemon(ctx context.Context, d store.Daemon) error {
	tags, err := tagsJSON(d.Tags)
	if err != nil {
		return wrapf(err, "insert daemon %q", d.NodeID)
	}
	if d.Status == "" {
		d.Status = store.DaemonActive
	}
	err = q.atomic(ctx, func(q *queries) error {
		n, err := changed(q.w.ExecContext(ctx, `
			INSERT INTO edge_daemons (
			    node_id, tenant_id, display_name, tags, os, hostname,
			    public_key, previous_public_key, overlap_until, status, security_context,
			    enrolled_at, key_rotated_at, last_seen_at, revoked_at,
			    session_id, session_replica, session_since)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT DO NOTHING`,
			d.NodeID, d.TenantID, d.DisplayName, tags, d.OS, d.Hostname,
			sqlstore.Bytes(d.PublicKey), sqlstore.Bytes(d.PreviousPublicKey), micros(d.OverlapUntil), d.Status, d.SecurityContext,
			micros(d.EnrolledAt), micros(d.KeyRotatedAt), micros(d.LastSeenAt), micros(d.RevokedAt),
			d.SessionID, d.SessionReplica, micros(d.SessionSince)))
		switch {
		case isForeignKeyViolation(err):
			return wrapf(store.ErrNotFound, "tenant %q", d.TenantID)
		case err != nil || n == 1:
			return err
		}
		// Either unique column may have collided.
		var exists bool
		if err := q.w.QueryRowContext(ctx,
			`SELECT EXISTS (SELECT 1 FROM edge_daemons WHERE node_id = ?)`, d.NodeID).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return store.ErrConflict
		}
		return store.ErrKeyInUse
	})
	if err != nil {
		return wrapf(err, "insert daemon %q", d.NodeID)
	}
	return nil
}

func (q *queries) SwapDaemonKey(ctx context.Context, nodeID string, oldKey, newKey []byte, overlapUntil, at time.Time) error {
	err := q.atomic(ctx, func(q *queries) error {
		// The NOT EXISTS guard reports a key held by another daemon as a lost swap
		// instead of a unique-constraint error.
		n, err := changed(q.w.ExecContext(ctx, `
			UPDATE edge_daemons
			SET public_key = ?1, previous_public_key = ?2, overlap_until = ?3, key_rotated_at = ?4
			WHERE node_id = ?5
			  AND public_key = ?2
			  AND status = 'active'
			  AND NOT EXISTS (SELECT 1 FROM edge_daemons WHERE public_key = ?1)`,
			sqlstore.Bytes(newKey), sqlstore.Bytes(oldKey), micros(overlapUntil), micros(at), nodeID))
		if err != nil || n == 1 {
			return err
		}
		var current []byte
		var status string
		err = q.w.QueryRowContext(ctx,
			`SELECT public_key, status FROM edge_daemons WHERE node_id = ?`, nodeID).Scan(sqlstore.BytesCol{B: &current}, &status)
		switch {
		case err != nil:
			return err
		case status != store.DaemonActive:
			return wrapf(store.ErrConflict, "daemon is %s", status)
		case string(current) != string(oldKey):
			return wrapf(store.ErrConflict, "current key is not the old key")
		default:
			return store.ErrKeyInUse
		}
	})
	if err != nil {
		return wrapf(err, "swap key of daemon %q", nodeID)
	}
	return nil
}

func (q *queries) TouchLastSeen(ctx context.Context, seen map[string]time.Time) error {
	batch := make(map[string]int64, len(seen))
	for nodeID, t := range seen {
		if !t.IsZero() {
			batch[nodeID] = t.UnixMicro()
		}
	}
	if len(batch) == 0 {
		return nil
	}
	js, err := json.Marshal(batch)
	if err != nil {
		return wrapf(err, "touch last seen")
	}
	// One statement for the whole batch: json_each turns {"node": micros, ...} into rows.
	_, err = q.w.ExecContext(ctx, `
		UPDATE edge_daemons
		SET last_seen_at = seen.at
		FROM (SELECT key AS node_id, value AS at FROM json_each(?)) AS seen
		WHERE edge_daemons.node_id = seen.node_id
		  AND (edge_daemons.last_seen_at IS NULL OR edge_daemons.last_seen_at < seen.at)`,
		string(js))
	if err != nil {
		return wrapf(err, "touch last seen")
	}
	return nil
}
