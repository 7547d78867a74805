package sqlite

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

func (q *queries) CreateEnrollmentToken(ctx context.Context, t store.EnrollmentToken) error {
	tags, err := tagsJSON(t.Tags)
	if err != nil {
		return wrapf(err, "create enrollment token %q", t.ID)
	}
	n, err := changed(q.w.ExecContext(ctx, `
		INSERT INTO enrollment_tokens
		    (id, tenant_id, name, secret_hash, tags, created_by, created_at, expires_at, used_at, used_by, revoked_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT DO NOTHING`,
		t.ID, t.TenantID, t.Name, sqlstore.Bytes(t.SecretHash), tags, t.CreatedBy,
		micros(t.CreatedAt), micros(t.ExpiresAt), micros(t.UsedAt), t.UsedBy, micros(t.RevokedAt)))
	switch {
	case isForeignKeyViolation(err):
		return wrapf(store.ErrNotFound, "create enrollment token %q: tenant %q", t.ID, t.TenantID)
	case err != nil:
		return wrapf(err, "create enrollment token %q", t.ID)
	case n == 0:
		return wrapf(store.ErrConflict, "create enrollment token %q", t.ID)
	}
	return nil
}

func (q *queries) ConsumeEnrollmentToken(ctx context.Context, id, nodeID string, now time.Time) error {
	err := q.atomic(ctx, func(q *queries) error {
		// The compare-and-swap: only a valid token is marked, so two hosts racing for one
		// token cannot both succeed.
		n, err := changed(q.w.ExecContext(ctx, `
			UPDATE enrollment_tokens SET used_at = ?, used_by = ?
			WHERE id = ?
			  AND used_at IS NULL
			  AND revoked_at IS NULL
			  AND expires_at > ?`,
			micros(now), nodeID, id, micros(now)))
		if err != nil || n == 1 {
			return err
		}
		// Lost: say why.
		var used, revoked bool
		err = q.w.QueryRowContext(ctx, `
			SELECT used_at IS NOT NULL, revoked_at IS NOT NULL
			FROM enrollment_tokens WHERE id = ?`, id).Scan(&used, &revoked)
		switch {
		case err != nil:
			return err
		case used:
			return store.ErrTokenUsed
		case revoked:
			return store.ErrTokenRevoked
		default:
			return store.ErrTokenExpired
		}
	})
	if err != nil {
		return wrapf(err, "consume enrollment token %q", id)
	}
	return nil
}
