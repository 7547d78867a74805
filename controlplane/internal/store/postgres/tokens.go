package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Expiry convention, shared by every table with expires_at: a row is live while
// expires_at > now, so at expires_at itself it is already dead.

const insertNodeTokenSQL = `
	INSERT INTO node_tokens (jti, node_id, key_fingerprint, issued_at, expires_at)
	VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT DO NOTHING`

func nodeTokenArgs(t store.NodeToken) []any {
	return []any{t.JTI, t.NodeID, t.KeyFingerprint, ts(t.IssuedAt), ts(t.ExpiresAt)}
}

func (q *queries) InsertNodeToken(ctx context.Context, t store.NodeToken) error {
	tag, err := q.db.Exec(ctx, insertNodeTokenSQL, nodeTokenArgs(t)...)
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return wrapf(err, "insert node token %q", t.JTI)
	}
	return nil
}

const nodeTokenColumns = `jti, node_id, key_fingerprint, issued_at, expires_at`

func scanNodeToken(row pgx.Row) (store.NodeToken, error) {
	var t store.NodeToken
	err := row.Scan(&t.JTI, &t.NodeID, &t.KeyFingerprint, timeCol{&t.IssuedAt}, timeCol{&t.ExpiresAt})
	return t, err
}

func (q *queries) GetNodeToken(ctx context.Context, jti string) (store.NodeToken, error) {
	t, err := scanNodeToken(q.db.QueryRow(ctx, `SELECT `+nodeTokenColumns+` FROM node_tokens WHERE jti = $1`, jti))
	if err != nil {
		return store.NodeToken{}, wrapf(err, "get node token %q", jti)
	}
	return t, nil
}

func (q *queries) ActiveNodeTokens(ctx context.Context, nodeID string, now time.Time) ([]store.NodeToken, error) {
	rows, err := q.db.Query(ctx, `
		SELECT `+nodeTokenColumns+`
		FROM node_tokens AS t
		WHERE t.node_id = $1
		  AND t.expires_at > $2
		  AND NOT EXISTS (SELECT 1 FROM token_blacklist AS b WHERE b.jti = t.jti)
		ORDER BY t.issued_at NULLS FIRST, t.jti`,
		nodeID, ts(now))
	toks, err := collect(rows, err, scanNodeToken)
	if err != nil {
		return nil, wrapf(err, "active node tokens of %q", nodeID)
	}
	return toks, nil
}

// blacklistSQL: the first entry wins, its reason and time are what happened.
const blacklistSQL = `
	INSERT INTO token_blacklist (jti, node_id, reason, expires_at, added_at)
	VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT (jti) DO NOTHING`

func blacklistArgs(e store.BlacklistEntry) []any {
	return []any{e.JTI, e.NodeID, e.Reason, ts(e.ExpiresAt), ts(e.AddedAt)}
}

func (q *queries) BlacklistToken(ctx context.Context, e store.BlacklistEntry) error {
	_, err := q.db.Exec(ctx, blacklistSQL, blacklistArgs(e)...)
	if err != nil {
		return wrapf(err, "blacklist token %q", e.JTI)
	}
	return nil
}

func (q *queries) IsBlacklisted(ctx context.Context, jti string) (bool, error) {
	var listed bool
	err := q.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM token_blacklist WHERE jti = $1)`, jti).Scan(&listed)
	if err != nil {
		return false, wrapf(err, "is token %q blacklisted", jti)
	}
	return listed, nil
}

func (q *queries) ListBlacklist(ctx context.Context, now time.Time) ([]store.BlacklistEntry, error) {
	rows, err := q.db.Query(ctx, `
		SELECT jti, node_id, reason, expires_at, added_at
		FROM token_blacklist
		WHERE expires_at > $1
		ORDER BY added_at NULLS FIRST, jti`,
		ts(now))
	es, err := collect(rows, err, func(row pgx.Row) (store.BlacklistEntry, error) {
		var e store.BlacklistEntry
		err := row.Scan(&e.JTI, &e.NodeID, &e.Reason, timeCol{&e.ExpiresAt}, timeCol{&e.AddedAt})
		return e, err
	})
	if err != nil {
		return nil, wrapf(err, "list blacklist")
	}
	return es, nil
}

func (q *queries) PurgeBlacklist(ctx context.Context, now time.Time) (int, error) {
	tag, err := q.db.Exec(ctx, `DELETE FROM token_blacklist WHERE expires_at <= $1`, ts(now))
	if err != nil {
		return 0, wrapf(err, "purge blacklist")
	}
	return int(tag.RowsAffected()), nil
}

func (q *queries) CountBlacklist(ctx context.Context) (int, error) {
	var n int
	if err := q.db.QueryRow(ctx, `SELECT count(*) FROM token_blacklist`).Scan(&n); err != nil {
		return 0, wrapf(err, "count blacklist")
	}
	return n, nil
}

func (q *queries) InsertNonce(ctx context.Context, n store.Nonce) error {
	tag, err := q.db.Exec(ctx, `
		INSERT INTO attest_nonces (value, node_id, purpose, expires_at)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT DO NOTHING`,
		n.Value, n.NodeID, n.Purpose, ts(n.ExpiresAt))
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		// The value is a secret challenge: keep it out of the error.
		return wrapf(err, "insert nonce")
	}
	return nil
}

func (q *queries) ConsumeNonce(ctx context.Context, value string, now time.Time) (store.Nonce, error) {
	// Deleting is the consumption: of two concurrent calls only one gets the row.
	var n store.Nonce
	err := q.db.QueryRow(ctx, `
		DELETE FROM attest_nonces
		WHERE value = $1 AND expires_at > $2
		RETURNING value, node_id, purpose, expires_at`,
		value, ts(now)).Scan(&n.Value, &n.NodeID, &n.Purpose, timeCol{&n.ExpiresAt})
	if err != nil {
		return store.Nonce{}, wrapf(err, "consume nonce")
	}
	return n, nil
}

func (q *queries) PurgeNonces(ctx context.Context, now time.Time) (int, error) {
	tag, err := q.db.Exec(ctx, `DELETE FROM attest_nonces WHERE expires_at <= $1`, ts(now))
	if err != nil {
		return 0, wrapf(err, "purge nonces")
	}
	return int(tag.RowsAffected()), nil
}

const insertRotationSQL = `
	INSERT INTO rotations
	    (rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at)
	VALUES ($1, $2, $3, $4, $5, $6, $7)
	ON CONFLICT DO NOTHING`

func rotationArgs(r store.Rotation) []any {
	return []any{r.RotationID, r.NodeID, r.OldFingerprint, r.NewFingerprint, r.NewTokenJTI, r.NewToken, ts(r.At)}
}

func (q *queries) InsertRotation(ctx context.Context, r store.Rotation) error {
	tag, err := q.db.Exec(ctx, insertRotationSQL, rotationArgs(r)...)
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return wrapf(err, "insert rotation %q", r.RotationID)
	}
	return nil
}

func (q *queries) GetRotation(ctx context.Context, rotationID string) (store.Rotation, error) {
	var r store.Rotation
	err := q.db.QueryRow(ctx, `
		SELECT rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at
		FROM rotations WHERE rotation_id = $1`,
		rotationID).Scan(&r.RotationID, &r.NodeID, &r.OldFingerprint, &r.NewFingerprint, &r.NewTokenJTI, &r.NewToken, timeCol{&r.At})
	if err != nil {
		return store.Rotation{}, wrapf(err, "get rotation %q", rotationID)
	}
	return r, nil
}
