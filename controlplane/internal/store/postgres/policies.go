package postgres

import (
	"context"

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
