package sqlite

import (
	"context"
	"encoding/json"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func (q *queries) ClaimPublicKey(ctx context.Context, key []byte, nodeID string, at time.Time) error {
	n, err := changed(q.w.ExecContext(ctx, `
		INSERT INTO daemon_keys (key, node_id, claimed_at)
		VALUES (?, ?, ?)
		ON CONFLICT DO NOTHING`,
		blob(key), nodeID, micros(at)))
	if err == nil && n == 0 {
		err = store.ErrKeyInUse
	}
	if err != nil {
		return wrapf(err, "claim public key for %q", nodeID)
	}
	return nil
}

func (q *queries) KeyOwner(ctx context.Context, key []byte) (string, error) {
	var nodeID string
	err := q.r.QueryRowContext(ctx, `SELECT node_id FROM daemon_keys WHERE key = ?`, blob(key)).Scan(&nodeID)
	if err != nil {
		return "", wrapf(err, "owner of public key")
	}
	return nodeID, nil
}

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
			blob(d.PublicKey), blob(d.PreviousPublicKey), micros(d.OverlapUntil), d.Status, d.SecurityContext,
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

const daemonColumns = `
	node_id, tenant_id, display_name, tags, os, hostname,
	public_key, previous_public_key, overlap_until, status, security_context,
	enrolled_at, key_rotated_at, last_seen_at, revoked_at,
	session_id, session_replica, session_since, security_context_version, local_max_key_age_ms`

func scanDaemon(row scanner) (store.Daemon, error) {
	var d store.Daemon
	var localMaxMS int64
	err := row.Scan(&d.NodeID, &d.TenantID, &d.DisplayName, tagsCol{&d.Tags}, &d.OS, &d.Hostname,
		blobCol{&d.PublicKey}, blobCol{&d.PreviousPublicKey}, timeCol{&d.OverlapUntil}, &d.Status, &d.SecurityContext,
		timeCol{&d.EnrolledAt}, timeCol{&d.KeyRotatedAt}, timeCol{&d.LastSeenAt}, timeCol{&d.RevokedAt},
		&d.SessionID, &d.SessionReplica, timeCol{&d.SessionSince}, &d.SecurityContextVersion, &localMaxMS)
	d.LocalMaxKeyAge = time.Duration(localMaxMS) * time.Millisecond
	return d, err
}

func (q *queries) GetDaemon(ctx context.Context, nodeID string) (store.Daemon, error) {
	d, err := scanDaemon(q.r.QueryRowContext(ctx, `SELECT `+daemonColumns+` FROM edge_daemons WHERE node_id = ?`, nodeID))
	if err != nil {
		return store.Daemon{}, wrapf(err, "get daemon %q", nodeID)
	}
	return d, nil
}

func (q *queries) ListDaemons(ctx context.Context, f store.DaemonFilter) ([]store.Daemon, error) {
	query := `SELECT ` + daemonColumns + ` FROM edge_daemons`
	var args []any
	if f.TenantID != "" {
		query += ` WHERE tenant_id = ?`
		args = append(args, f.TenantID)
	}
	query += ` ORDER BY enrolled_at, node_id`
	rows, err := q.r.QueryContext(ctx, query, args...)
	ds, err := collect(rows, err, scanDaemon)
	if err != nil {
		return nil, wrapf(err, "list daemons")
	}
	return ds, nil
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
			blob(newKey), blob(oldKey), micros(overlapUntil), micros(at), nodeID))
		if err != nil || n == 1 {
			return err
		}
		var current []byte
		var status string
		err = q.w.QueryRowContext(ctx,
			`SELECT public_key, status FROM edge_daemons WHERE node_id = ?`, nodeID).Scan(blobCol{&current}, &status)
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

func (q *queries) RevokeDaemon(ctx context.Context, nodeID string, at time.Time) error {
	return q.updateDaemon(ctx, nodeID, "revoke daemon %q", `
		UPDATE edge_daemons SET status = 'revoked', revoked_at = coalesce(revoked_at, ?)
		WHERE node_id = ?`,
		micros(at), nodeID)
}

func (q *queries) DeleteDaemon(ctx context.Context, nodeID string) error {
	return q.updateDaemon(ctx, nodeID, "delete daemon %q", `DELETE FROM edge_daemons WHERE node_id = ?`, nodeID)
}

func (q *queries) UpdateDaemonTags(ctx context.Context, nodeID string, tags []string) error {
	js, err := tagsJSON(tags)
	if err != nil {
		return wrapf(err, "update tags of daemon %q", nodeID)
	}
	return q.updateDaemon(ctx, nodeID, "update tags of daemon %q",
		`UPDATE edge_daemons SET tags = ? WHERE node_id = ?`, js, nodeID)
}

func (q *queries) SetDaemonSecurityContext(ctx context.Context, nodeID, name string) error {
	return q.updateDaemon(ctx, nodeID, "set security context of daemon %q",
		`UPDATE edge_daemons SET security_context = ?, security_context_version = security_context_version + 1 WHERE node_id = ?`, name, nodeID)
}

func (q *queries) SetDaemonLocalMaxKeyAge(ctx context.Context, nodeID string, max time.Duration) error {
	return q.updateDaemon(ctx, nodeID, "set local max key age of daemon %q",
		`UPDATE edge_daemons SET local_max_key_age_ms = ? WHERE node_id = ?`, max.Milliseconds(), nodeID)
}

func (q *queries) OpenSession(ctx context.Context, nodeID, sessionID, replica string, at time.Time) error {
	return q.updateDaemon(ctx, nodeID, "open session of daemon %q", `
		UPDATE edge_daemons SET session_id = ?, session_replica = ?, session_since = ?
		WHERE node_id = ?`,
		sessionID, replica, micros(at), nodeID)
}

// updateDaemon runs a statement on one daemon's row; no row is ErrNotFound.
func (q *queries) updateDaemon(ctx context.Context, nodeID, what, query string, args ...any) error {
	n, err := changed(q.w.ExecContext(ctx, query, args...))
	if err == nil && n == 0 {
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
	_, err := q.w.ExecContext(ctx, `
		UPDATE edge_daemons SET session_id = '', session_replica = '', session_since = NULL
		WHERE node_id = ? AND session_id = ? AND session_id <> ''`,
		nodeID, sessionID)
	if err != nil {
		return wrapf(err, "close session of daemon %q", nodeID)
	}
	return nil
}

func (q *queries) CloseReplicaSessions(ctx context.Context, replica string) error {
	_, err := q.w.ExecContext(ctx, `
		UPDATE edge_daemons SET session_id = '', session_replica = '', session_since = NULL
		WHERE session_replica = ? AND session_id <> ''`,
		replica)
	if err != nil {
		return wrapf(err, "close sessions of replica %q", replica)
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
