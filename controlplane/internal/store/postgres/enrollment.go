package postgres

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

func (q *queries) CreateEnrollmentToken(ctx context.Context, t store.EnrollmentToken) error {
	err := q.insertForTenant(ctx, t.TenantID, `
		INSERT INTO enrollment_tokens
		    (id, tenant_id, name, secret_hash, tags, created_by, created_at, expires_at, used_at, used_by, revoked_at)
		SELECT $1, tenants.id, $3, $4::bytea, $5::text[], $6,
		       $7::timestamptz, $8::timestamptz, $9::timestamptz, $10, $11::timestamptz
		FROM tenants WHERE tenants.id = $2
		ON CONFLICT DO NOTHING`,
		t.ID, t.TenantID, t.Name, sqlstore.Bytes(t.SecretHash), tagsArg(t.Tags), t.CreatedBy,
		ts(t.CreatedAt), ts(t.ExpiresAt), ts(t.UsedAt), t.UsedBy, ts(t.RevokedAt))
	if err != nil {
		return wrapf(err, "create enrollment token %q", t.ID)
	}
	return nil
}

func (q *queries) ConsumeEnrollmentToken(ctx context.Context, id, nodeID string, now time.Time) error {
	// The compare-and-swap: only a valid token is marked, so of hosts racing for one
	// token exactly one succeeds; the others wait for its row lock, re-check the
	// conditions against the committed row and change nothing.
	tag, err := q.db.Exec(ctx, `
		UPDATE enrollment_tokens SET used_at = $1, used_by = $2
		WHERE id = $3
		  AND used_at IS NULL
		  AND revoked_at IS NULL
		  AND expires_at > $1`,
		ts(now), nodeID, id)
	if err != nil {
		return wrapf(err, "consume enrollment token %q", id)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	// Lost: say why. A separate statement, so that at READ COMMITTED it sees the
	// winner's commit that the UPDATE waited for.
	var used, revoked bool
	err = q.db.QueryRow(ctx, `
		SELECT used_at IS NOT NULL, revoked_at IS NOT NULL
		FROM enrollment_tokens WHERE id = $1`, id).Scan(&used, &revoked)
	switch {
	case err != nil:
	case used:
		err = store.ErrTokenUsed
	case revoked:
		err = store.ErrTokenRevoked
	default:
		err = store.ErrTokenExpired
	}
	return wrapf(err, "consume enrollment token %q", id)
}
