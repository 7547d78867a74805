package sqlstore

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// InsertDaemon, SwapDaemonKey and TouchLastSeen stay in each store: how a missing
// tenant or a collision is told apart, and how a batch travels, differ.

// ClaimKeySQL: of two transactions claiming one key, the second waits for the first
// and then inserts nothing (or the key, if the first rolled back): never a raised
// error.
const ClaimKeySQL = `
	INSERT INTO daemon_keys (key, node_id, claimed_at)
	VALUES ($1, $2, $3)
	ON CONFLICT DO NOTHING`

func (q Queries) ClaimPublicKey(ctx context.Context, key []byte, nodeID string, at time.Time) error {
	n, err := q.exec(ctx, ClaimKeySQL, Bytes(key), nodeID, q.D.Time(at))
	if err == nil && n == 0 {
		err = store.ErrKeyInUse
	}
	if err != nil {
		return q.wrapf(err, "claim public key for %q", nodeID)
	}
	return nil
}

func (q Queries) KeyOwner(ctx context.Context, key []byte) (string, error) {
	var nodeID string
	err := q.readRow(ctx, `SELECT node_id FROM daemon_keys WHERE key = $1`, Bytes(key)).Scan(&nodeID)
	if err != nil {
		return "", q.wrapf(err, "owner of public key")
	}
	return nodeID, nil
}

// DaemonColumns are the columns ScanDaemon reads, in its order.
const DaemonColumns = `
	node_id, tenant_id, display_name, tags, os, hostname,
	public_key, previous_public_key, overlap_until, status, security_context,
	enrolled_at, key_rotated_at, last_seen_at, revoked_at,
	session_id, session_replica, session_since, security_context_version, local_max_key_age_ms`

// ScanDaemon reads a row of DaemonColumns; Tags is never nil.
func (d *Dialect) ScanDaemon(row Row) (store.Daemon, error) {
	var dm store.Daemon
	var localMaxMS int64
	err := row.Scan(&dm.NodeID, &dm.TenantID, &dm.DisplayName, d.TagsCol(&dm.Tags), &dm.OS, &dm.Hostname,
		BytesCol{&dm.PublicKey}, BytesCol{&dm.PreviousPublicKey}, TimeCol{&dm.OverlapUntil}, &dm.Status, &dm.SecurityContext,
		TimeCol{&dm.EnrolledAt}, TimeCol{&dm.KeyRotatedAt}, TimeCol{&dm.LastSeenAt}, TimeCol{&dm.RevokedAt},
		&dm.SessionID, &dm.SessionReplica, TimeCol{&dm.SessionSince}, &dm.SecurityContextVersion, &localMaxMS)
	dm.LocalMaxKeyAge = time.Duration(localMaxMS) * time.Millisecond
	if dm.Tags == nil {
		dm.Tags = []string{}
	}
	return dm, err
}

func (q Queries) GetDaemon(ctx context.Context, nodeID string) (store.Daemon, error) {
	d, err := q.D.ScanDaemon(q.readRow(ctx, `SELECT `+DaemonColumns+` FROM edge_daemons WHERE node_id = $1`, nodeID))
	if err != nil {
		return store.Daemon{}, q.wrapf(err, "get daemon %q", nodeID)
	}
	return d, nil
}

func (q Queries) ListDaemons(ctx context.Context, f store.DaemonFilter) ([]store.Daemon, error) {
	query := `SELECT ` + DaemonColumns + ` FROM edge_daemons`
	var args []any
	if f.TenantID != "" {
		query += ` WHERE tenant_id = $1`
		args = append(args, f.TenantID)
	}
	query += ` ORDER BY enrolled_at NULLS FIRST, node_id`
	rows, err := q.read(ctx, query, args...)
	ds, err := Collect(rows, err, q.D.ScanDaemon)
	if err != nil {
		return nil, q.wrapf(err, "list daemons")
	}
	return ds, nil
}

func (q Queries) RevokeDaemon(ctx context.Context, nodeID string, at time.Time) error {
	return q.updateDaemon(ctx, nodeID, "revoke daemon %q", `
		UPDATE edge_daemons SET status = 'revoked', revoked_at = coalesce(revoked_at, $1)
		WHERE node_id = $2`,
		q.D.Time(at), nodeID)
}

func (q Queries) DeleteDaemon(ctx context.Context, nodeID string) error {
	return q.updateDaemon(ctx, nodeID, "delete daemon %q", `DELETE FROM edge_daemons WHERE node_id = $1`, nodeID)
}

func (q Queries) UpdateDaemonTags(ctx context.Context, nodeID string, tags []string) error {
	arg, err := q.D.Tags(tags)
	if err != nil {
		return q.wrapf(err, "update tags of daemon %q", nodeID)
	}
	return q.updateDaemon(ctx, nodeID, "update tags of daemon %q",
		`UPDATE edge_daemons SET tags = $1 WHERE node_id = $2`, arg, nodeID)
}

// SetDaemonLocalMaxKeyAge stores the host's own rotation.max_key_age, in
// milliseconds (0: none).
func (q Queries) SetDaemonLocalMaxKeyAge(ctx context.Context, nodeID string, max time.Duration) error {
	return q.updateDaemon(ctx, nodeID, "set local max key age of daemon %q",
		`UPDATE edge_daemons SET local_max_key_age_ms = $1 WHERE node_id = $2`, max.Milliseconds(), nodeID)
}

func (q Queries) SetDaemonSecurityContext(ctx context.Context, nodeID, name string) error {
	return q.updateDaemon(ctx, nodeID, "set security context of daemon %q",
		`UPDATE edge_daemons SET security_context = $1, security_context_version = security_context_version + 1 WHERE node_id = $2`, name, nodeID)
}

func (q Queries) OpenSession(ctx context.Context, nodeID, sessionID, replica string, at time.Time) error {
	return q.updateDaemon(ctx, nodeID, "open session of daemon %q", `
		UPDATE edge_daemons SET session_id = $1, session_replica = $2, session_since = $3
		WHERE node_id = $4`,
		sessionID, replica, q.D.Time(at), nodeID)
}

// updateDaemon runs a statement on one daemon's row; no row is ErrNotFound.
func (q Queries) updateDaemon(ctx context.Context, nodeID, what, query string, args ...any) error {
	n, err := q.exec(ctx, query, args...)
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return q.wrapf(err, what, nodeID)
	}
	return nil
}

func (q Queries) CloseSession(ctx context.Context, nodeID, sessionID string) error {
	// Only the session that is still current: a stream replaced by a reconnect must not
	// clear its successor when it finally ends.
	_, err := q.exec(ctx, `
		UPDATE edge_daemons SET session_id = '', session_replica = '', session_since = NULL
		WHERE node_id = $1 AND session_id = $2 AND session_id <> ''`,
		nodeID, sessionID)
	if err != nil {
		return q.wrapf(err, "close session of daemon %q", nodeID)
	}
	return nil
}

func (q Queries) CloseReplicaSessions(ctx context.Context, replica string) error {
	_, err := q.exec(ctx, `
		UPDATE edge_daemons SET session_id = '', session_replica = '', session_since = NULL
		WHERE session_replica = $1 AND session_id <> ''`,
		replica)
	if err != nil {
		return q.wrapf(err, "close sessions of replica %q", replica)
	}
	return nil
}
