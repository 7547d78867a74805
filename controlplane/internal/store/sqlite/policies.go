package sqlite

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func (q *queries) PutRotationPolicy(ctx context.Context, p store.RotationPolicy) error {
	_, err := q.w.ExecContext(ctx, `
		INSERT INTO rotation_policies (tenant_id, name, target, max_key_age_ms, created_at, updated_at, updated_by)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, name) DO UPDATE SET
			target = excluded.target, max_key_age_ms = excluded.max_key_age_ms,
			updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
		p.TenantID, p.Name, p.Target, p.MaxKeyAge.Milliseconds(), micros(p.CreatedAt), micros(p.UpdatedAt), p.UpdatedBy)
	switch {
	case isForeignKeyViolation(err):
		return wrapf(store.ErrNotFound, "put rotation policy %q: tenant %q", p.Name, p.TenantID)
	case err != nil:
		return wrapf(err, "put rotation policy %q", p.Name)
	}
	return nil
}

const policyColumns = `tenant_id, name, target, max_key_age_ms, created_at, updated_at, updated_by`

func scanPolicy(row scanner) (store.RotationPolicy, error) {
	var p store.RotationPolicy
	var ms int64
	err := row.Scan(&p.TenantID, &p.Name, &p.Target, &ms, timeCol{&p.CreatedAt}, timeCol{&p.UpdatedAt}, &p.UpdatedBy)
	p.MaxKeyAge = time.Duration(ms) * time.Millisecond
	return p, err
}

func (q *queries) GetRotationPolicy(ctx context.Context, tenantID, name string) (store.RotationPolicy, error) {
	p, err := scanPolicy(q.r.QueryRowContext(ctx, `SELECT `+policyColumns+` FROM rotation_policies WHERE tenant_id = ? AND name = ?`, tenantID, name))
	if err != nil {
		return store.RotationPolicy{}, wrapf(err, "get rotation policy %q", name)
	}
	return p, nil
}

func (q *queries) ListRotationPolicies(ctx context.Context, tenantID string) ([]store.RotationPolicy, error) {
	rows, err := q.r.QueryContext(ctx, `SELECT `+policyColumns+` FROM rotation_policies
		WHERE ? = '' OR tenant_id = ? ORDER BY tenant_id, name`, tenantID, tenantID)
	ps, err := collect(rows, err, scanPolicy)
	if err != nil {
		return nil, wrapf(err, "list rotation policies")
	}
	return ps, nil
}

func (q *queries) DeleteRotationPolicy(ctx context.Context, tenantID, name string) error {
	n, err := changed(q.w.ExecContext(ctx, `DELETE FROM rotation_policies WHERE tenant_id = ? AND name = ?`, tenantID, name))
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, "delete rotation policy %q", name)
	}
	return nil
}
