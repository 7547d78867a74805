package sqlstore

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// CreateEnrollmentToken and ConsumeEnrollmentToken stay in each store: how a missing
// tenant is detected, and how a lost compare-and-swap explains itself atomically,
// differ.

const enrollmentTokenColumns = `
	id, tenant_id, name, secret_hash, tags, created_by, created_at, expires_at, used_at, used_by, revoked_at`

func (d *Dialect) scanEnrollmentToken(row Row) (store.EnrollmentToken, error) {
	var t store.EnrollmentToken
	err := row.Scan(&t.ID, &t.TenantID, &t.Name, BytesCol{&t.SecretHash}, d.TagsCol(&t.Tags), &t.CreatedBy,
		TimeCol{&t.CreatedAt}, TimeCol{&t.ExpiresAt}, TimeCol{&t.UsedAt}, &t.UsedBy, TimeCol{&t.RevokedAt})
	if t.Tags == nil {
		t.Tags = []string{}
	}
	return t, err
}

func (q Queries) GetEnrollmentToken(ctx context.Context, id string) (store.EnrollmentToken, error) {
	t, err := q.D.scanEnrollmentToken(q.readRow(ctx,
		`SELECT `+enrollmentTokenColumns+` FROM enrollment_tokens WHERE id = $1`, id))
	if err != nil {
		return store.EnrollmentToken{}, q.wrapf(err, "get enrollment token %q", id)
	}
	return t, nil
}

func (q Queries) ListEnrollmentTokens(ctx context.Context, tenantID string) ([]store.EnrollmentToken, error) {
	query := `SELECT ` + enrollmentTokenColumns + ` FROM enrollment_tokens`
	var args []any
	if tenantID != "" {
		query += ` WHERE tenant_id = $1`
		args = append(args, tenantID)
	}
	query += ` ORDER BY created_at DESC NULLS LAST, id DESC`
	rows, err := q.read(ctx, query, args...)
	toks, err := Collect(rows, err, q.D.scanEnrollmentToken)
	if err != nil {
		return nil, q.wrapf(err, "list enrollment tokens")
	}
	return toks, nil
}

func (q Queries) RevokeEnrollmentToken(ctx context.Context, tenantID, id string, at time.Time) error {
	query := `UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2`
	args := []any{q.D.Time(at), id}
	if tenantID != "" {
		query += ` AND tenant_id = $3`
		args = append(args, tenantID)
	}
	n, err := q.exec(ctx, query, args...)
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return q.wrapf(err, "revoke enrollment token %q", id)
	}
	return nil
}
