package sqlstore

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Expiry convention, shared by every table with expires_at: a row is live while
// expires_at > now, so at expires_at itself it is already dead.

// InsertNodeTokenSQL and the other exported statement texts are also sent in
// PostgreSQL's rotation batch, with the arguments the matching *Args builds.
const InsertNodeTokenSQL = `
	INSERT INTO node_tokens (jti, node_id, key_fingerprint, issued_at, expires_at)
	VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT DO NOTHING`

func (d *Dialect) NodeTokenArgs(t store.NodeToken) []any {
	return []any{t.JTI, t.NodeID, t.KeyFingerprint, d.Time(t.IssuedAt), d.Time(t.ExpiresAt)}
}

func (q Queries) InsertNodeToken(ctx context.Context, t store.NodeToken) error {
	n, err := q.exec(ctx, InsertNodeTokenSQL, q.D.NodeTokenArgs(t)...)
	if err == nil && n == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return q.wrapf(err, "insert node token %q", t.JTI)
	}
	return nil
}

const nodeTokenColumns = `jti, node_id, key_fingerprint, issued_at, expires_at`

func scanNodeToken(row Row) (store.NodeToken, error) {
	var t store.NodeToken
	err := row.Scan(&t.JTI, &t.NodeID, &t.KeyFingerprint, TimeCol{&t.IssuedAt}, TimeCol{&t.ExpiresAt})
	return t, err
}

func (q Queries) GetNodeToken(ctx context.Context, jti string) (store.NodeToken, error) {
	t, err := scanNodeToken(q.readRow(ctx, `SELECT `+nodeTokenColumns+` FROM node_tokens WHERE jti = $1`, jti))
	if err != nil {
		return store.NodeToken{}, q.wrapf(err, "get node token %q", jti)
	}
	return t, nil
}

func (q Queries) ActiveNodeTokens(ctx context.Context, nodeID string, now time.Time) ([]store.NodeToken, error) {
	rows, err := q.read(ctx, `
		SELECT `+nodeTokenColumns+`
		FROM node_tokens AS t
		WHERE t.node_id = $1
		  AND t.expires_at > $2
		  AND NOT EXISTS (SELECT 1 FROM token_blacklist AS b WHERE b.jti = t.jti)
		ORDER BY t.issued_at NULLS FIRST, t.jti`,
		nodeID, q.D.Time(now))
	toks, err := Collect(rows, err, scanNodeToken)
	if err != nil {
		return nil, q.wrapf(err, "active node tokens of %q", nodeID)
	}
	return toks, nil
}

// BlacklistSQL: the first entry wins, its reason and time are what happened.
const BlacklistSQL = `
	INSERT INTO token_blacklist (jti, node_id, reason, expires_at, added_at)
	VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT (jti) DO NOTHING`

func (d *Dialect) BlacklistArgs(e store.BlacklistEntry) []any {
	return []any{e.JTI, e.NodeID, e.Reason, d.Time(e.ExpiresAt), d.Time(e.AddedAt)}
}

func (q Queries) BlacklistToken(ctx context.Context, e store.BlacklistEntry) error {
	if _, err := q.exec(ctx, BlacklistSQL, q.D.BlacklistArgs(e)...); err != nil {
		return q.wrapf(err, "blacklist token %q", e.JTI)
	}
	return nil
}

func (q Queries) IsBlacklisted(ctx context.Context, jti string) (bool, error) {
	var listed bool
	err := q.readRow(ctx, `SELECT EXISTS (SELECT 1 FROM token_blacklist WHERE jti = $1)`, jti).Scan(&listed)
	if err != nil {
		return false, q.wrapf(err, "is token %q blacklisted", jti)
	}
	return listed, nil
}

func (q Queries) ListBlacklist(ctx context.Context, now time.Time) ([]store.BlacklistEntry, error) {
	rows, err := q.read(ctx, `
		SELECT jti, node_id, reason, expires_at, added_at
		FROM token_blacklist
		WHERE expires_at > $1
		ORDER BY added_at NULLS FIRST, jti`,
		q.D.Time(now))
	es, err := Collect(rows, err, func(row Row) (store.BlacklistEntry, error) {
		var e store.BlacklistEntry
		err := row.Scan(&e.JTI, &e.NodeID, &e.Reason, TimeCol{&e.ExpiresAt}, TimeCol{&e.AddedAt})
		return e, err
	})
	if err != nil {
		return nil, q.wrapf(err, "list blacklist")
	}
	return es, nil
}

func (q Queries) PurgeBlacklist(ctx context.Context, now time.Time) (int, error) {
	n, err := q.exec(ctx, `DELETE FROM token_blacklist WHERE expires_at <= $1`, q.D.Time(now))
	if err != nil {
		return 0, q.wrapf(err, "purge blacklist")
	}
	return int(n), nil
}

func (q Queries) CountBlacklist(ctx context.Context) (int, error) {
	var n int
	if err := q.readRow(ctx, `SELECT count(*) FROM token_blacklist`).Scan(&n); err != nil {
		return 0, q.wrapf(err, "count blacklist")
	}
	return n, nil
}

func (q Queries) InsertNonce(ctx context.Context, n store.Nonce) error {
	rows, err := q.exec(ctx, `
		INSERT INTO attest_nonces (value, node_id, purpose, expires_at)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT DO NOTHING`,
		n.Value, n.NodeID, n.Purpose, q.D.Time(n.ExpiresAt))
	if err == nil && rows == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		// The value is a secret challenge: keep it out of the error.
		return q.wrapf(err, "insert nonce")
	}
	return nil
}

func (q Queries) ConsumeNonce(ctx context.Context, value string, now time.Time) (store.Nonce, error) {
	// Deleting is the consumption: of two concurrent calls only one gets the row.
	var n store.Nonce
	err := q.writeRow(ctx, `
		DELETE FROM attest_nonces
		WHERE value = $1 AND expires_at > $2
		RETURNING value, node_id, purpose, expires_at`,
		value, q.D.Time(now)).Scan(&n.Value, &n.NodeID, &n.Purpose, TimeCol{&n.ExpiresAt})
	if err != nil {
		// The value is a secret challenge: keep it out of the error.
		return store.Nonce{}, q.wrapf(err, "consume nonce")
	}
	return n, nil
}

func (q Queries) PurgeNonces(ctx context.Context, now time.Time) (int, error) {
	n, err := q.exec(ctx, `DELETE FROM attest_nonces WHERE expires_at <= $1`, q.D.Time(now))
	if err != nil {
		return 0, q.wrapf(err, "purge nonces")
	}
	return int(n), nil
}

const InsertRotationSQL = `
	INSERT INTO rotations
	    (rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at)
	VALUES ($1, $2, $3, $4, $5, $6, $7)
	ON CONFLICT DO NOTHING`

func (d *Dialect) RotationArgs(r store.Rotation) []any {
	return []any{r.RotationID, r.NodeID, r.OldFingerprint, r.NewFingerprint, r.NewTokenJTI, r.NewToken, d.Time(r.At)}
}

func (q Queries) InsertRotation(ctx context.Context, r store.Rotation) error {
	n, err := q.exec(ctx, InsertRotationSQL, q.D.RotationArgs(r)...)
	if err == nil && n == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return q.wrapf(err, "insert rotation %q", r.RotationID)
	}
	return nil
}

func (q Queries) GetRotation(ctx context.Context, rotationID string) (store.Rotation, error) {
	var r store.Rotation
	err := q.readRow(ctx, `
		SELECT rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at
		FROM rotations WHERE rotation_id = $1`,
		rotationID).Scan(&r.RotationID, &r.NodeID, &r.OldFingerprint, &r.NewFingerprint, &r.NewTokenJTI, &r.NewToken, TimeCol{&r.At})
	if err != nil {
		return store.Rotation{}, q.wrapf(err, "get rotation %q", rotationID)
	}
	return r, nil
}
