package sqlite

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
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
		t.ID, t.TenantID, t.Name, blob(t.SecretHash), tags, t.CreatedBy,
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

const enrollmentTokenColumns = `
	id, tenant_id, name, secret_hash, tags, created_by, created_at, expires_at, used_at, used_by, revoked_at`

func scanEnrollmentToken(row scanner) (store.EnrollmentToken, error) {
	var t store.EnrollmentToken
	err := row.Scan(&t.ID, &t.TenantID, &t.Name, blobCol{&t.SecretHash}, tagsCol{&t.Tags}, &t.CreatedBy,
		timeCol{&t.CreatedAt}, timeCol{&t.ExpiresAt}, timeCol{&t.UsedAt}, &t.UsedBy, timeCol{&t.RevokedAt})
	return t, err
}

func (q *queries) GetEnrollmentToken(ctx context.Context, id string) (store.EnrollmentToken, error) {
	t, err := scanEnrollmentToken(q.r.QueryRowContext(ctx,
		`SELECT `+enrollmentTokenColumns+` FROM enrollment_tokens WHERE id = ?`, id))
	if err != nil {
		return store.EnrollmentToken{}, wrapf(err, "get enrollment token %q", id)
	}
	return t, nil
}

func (q *queries) ListEnrollmentTokens(ctx context.Context, tenantID string) ([]store.EnrollmentToken, error) {
	query := `SELECT ` + enrollmentTokenColumns + ` FROM enrollment_tokens`
	var args []any
	if tenantID != "" {
		query += ` WHERE tenant_id = ?`
		args = append(args, tenantID)
	}
	query += ` ORDER BY created_at DESC, id DESC`
	rows, err := q.r.QueryContext(ctx, query, args...)
	ts, err := collect(rows, err, scanEnrollmentToken)
	if err != nil {
		return nil, wrapf(err, "list enrollment tokens")
	}
	return ts, nil
}

func (q *queries) RevokeEnrollmentToken(ctx context.Context, tenantID, id string, at time.Time) error {
	query := `UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`
	args := []any{micros(at), id}
	if tenantID != "" {
		query += ` AND tenant_id = ?`
		args = append(args, tenantID)
	}
	n, err := changed(q.w.ExecContext(ctx, query, args...))
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, "revoke enrollment token %q", id)
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
