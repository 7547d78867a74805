package sqlstore

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// PutRotationPolicy stays in each store: how a missing tenant is detected differs.

const policyColumns = `tenant_id, name, target, max_key_age_ms, created_at, updated_at, updated_by`

func scanPolicy(row Row) (store.RotationPolicy, error) {
	var p store.RotationPolicy
	var ms int64
	err := row.Scan(&p.TenantID, &p.Name, &p.Target, &ms, TimeCol{&p.CreatedAt}, TimeCol{&p.UpdatedAt}, &p.UpdatedBy)
	p.MaxKeyAge = time.Duration(ms) * time.Millisecond
	return p, err
}

func (q Queries) GetRotationPolicy(ctx context.Context, tenantID, name string) (store.RotationPolicy, error) {
	p, err := scanPolicy(q.readRow(ctx, `SELECT `+policyColumns+` FROM rotation_policies WHERE tenant_id = $1 AND name = $2`, tenantID, name))
	if err != nil {
		return store.RotationPolicy{}, q.wrapf(err, "get rotation policy %q", name)
	}
	return p, nil
}

func (q Queries) ListRotationPolicies(ctx context.Context, tenantID string) ([]store.RotationPolicy, error) {
	rows, err := q.read(ctx, `SELECT `+policyColumns+` FROM rotation_policies
		WHERE $1 = '' OR tenant_id = $1 ORDER BY tenant_id, name`, tenantID)
	ps, err := Collect(rows, err, scanPolicy)
	if err != nil {
		return nil, q.wrapf(err, "list rotation policies")
	}
	return ps, nil
}

func (q Queries) DeleteRotationPolicy(ctx context.Context, tenantID, name string) error {
	n, err := q.exec(ctx, `DELETE FROM rotation_policies WHERE tenant_id = $1 AND name = $2`, tenantID, name)
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return q.wrapf(err, "delete rotation policy %q", name)
	}
	return nil
}
