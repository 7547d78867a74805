package sqlite

import (
	"context"

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
