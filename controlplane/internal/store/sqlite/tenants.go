package sqlite

import (
	"context"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// Tenants, API token reads and signing keys are shared (sqlstore); what stays here
// is how an insert for a tenant finds that the tenant is missing.

func (q *queries) CreateAPIToken(ctx context.Context, t store.APIToken) error {
	n, err := changed(q.w.ExecContext(ctx, `
		INSERT INTO api_tokens (id, tenant_id, role, name, secret_hash, created_at, revoked_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT DO NOTHING`,
		t.ID, t.TenantID, t.Role, t.Name, sqlstore.Bytes(t.SecretHash), micros(t.CreatedAt), micros(t.RevokedAt)))
	switch {
	case isForeignKeyViolation(err):
		return wrapf(store.ErrNotFound, "create api token %q: tenant %q", t.ID, t.TenantID)
	case err != nil:
		return wrapf(err, "create api token %q", t.ID)
	case n == 0:
		return wrapf(store.ErrConflict, "create api token %q", t.ID)
	}
	return nil
}
