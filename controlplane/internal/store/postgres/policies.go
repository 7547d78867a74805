package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func (q *queries) PutRotationPolicy(ctx context.Context, p store.RotationPolicy) error {
	// INSERT ... SELECT FROM tenants: a missing tenant inserts nothing rather than
	// raising a foreign-key violation that would abort the caller's transaction.
	tag, err := q.db.Exec(ctx, `
		INSERT INTO rotation_policies (tenant_id, name, target, max_key_age_ms, created_at, updated_at, updated_by)
		SELECT tenants.id, $2, $3, $4, $5::timestamptz, $6::timestamptz, $7
		FROM tenants WHERE tenants.id = $1
		ON CONFLICT (tenant_id, name) DO UPDATE SET
			target = excluded.target, max_key_age_ms = excluded.max_key_age_ms,
			updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
		p.TenantID, p.Name, p.Target, p.MaxKeyAge.Milliseconds(), ts(p.CreatedAt), ts(p.UpdatedAt), p.UpdatedBy)
	switch {
	case pgCode(err) == foreignKeyViolation:
		err = store.ErrNotFound
	case err == nil && tag.RowsAffected() == 0:
		err = store.ErrNotFound // no such tenant
	}
	if err != nil {
		return wrapf(err, "put rotation policy %q: tenant %q", p.Name, p.TenantID)
	}
	return nil
}

const policyColumns = `tenant_id, name, target, max_key_age_ms, created_at, updated_at, updated_by`

func scanPolicy(row pgx.Row) (store.RotationPolicy, error) {
	var p store.RotationPolicy
	var ms int64
	err := row.Scan(&p.TenantID, &p.Name, &p.Target, &ms, timeCol{&p.CreatedAt}, timeCol{&p.UpdatedAt}, &p.UpdatedBy)
	p.MaxKeyAge = time.Duration(ms) * time.Millisecond
	return p, err
}

func (q *queries) GetRotationPolicy(ctx context.Context, tenantID, name string) (store.RotationPolicy, error) {
	p, err := scanPolicy(q.db.QueryRow(ctx, `SELECT `+policyColumns+` FROM rotation_policies WHERE tenant_id = $1 AND name = $2`, tenantID, name))
	if err != nil {
		return store.RotationPolicy{}, wrapf(err, "get rotation policy %q", name)
	}
	return p, nil
}

func (q *queries) ListRotationPolicies(ctx context.Context, tenantID string) ([]store.RotationPolicy, error) {
	rows, err := q.db.Query(ctx, `SELECT `+policyColumns+` FROM rotation_policies
		WHERE $1 = '' OR tenant_id = $1 ORDER BY tenant_id, name`, tenantID)
	ps, err := collect(rows, err, scanPolicy)
	if err != nil {
		return nil, wrapf(err, "list rotation policies")
	}
	return ps, nil
}

func (q *queries) DeleteRotationPolicy(ctx context.Context, tenantID, name string) error {
	tag, err := q.db.Exec(ctx, `DELETE FROM rotation_policies WHERE tenant_id = $1 AND name = $2`, tenantID, name)
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, "delete rotation policy %q", name)
	}
	return nil
}
