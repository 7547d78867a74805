package postgres

import (
	"context"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// Tenants, API token reads and signing keys are shared (sqlstore); what stays here
// is how an insert for a tenant finds that the tenant is missing.

func (q *queries) CreateAPIToken(ctx context.Context, t store.APIToken) error {
	err := q.insertForTenant(ctx, t.TenantID, `
		INSERT INTO api_tokens (id, tenant_id, role, name, secret_hash, created_at, revoked_at)
		SELECT $1, tenants.id, $3, $4, $5::bytea, $6::timestamptz, $7::timestamptz
		FROM tenants WHERE tenants.id = $2
		ON CONFLICT DO NOTHING`,
		t.ID, t.TenantID, t.Role, t.Name, sqlstore.Bytes(t.SecretHash), ts(t.CreatedAt), ts(t.RevokedAt))
	if err != nil {
		return wrapf(err, "create api token %q", t.ID)
	}
	return nil
}

// insertForTenant runs an INSERT ... SELECT ... FROM tenants WHERE tenants.id = $2
// ... ON CONFLICT DO NOTHING: a missing tenant inserts no row instead of raising a
// foreign-key violation. No row inserted is then ErrNotFound (no such tenant) or
// ErrConflict (the key exists), decided by a second statement that, at READ
// COMMITTED, sees whatever row the insert collided with.
func (q *queries) insertForTenant(ctx context.Context, tenantID, query string, args ...any) error {
	tag, err := q.db.Exec(ctx, query, args...)
	switch {
	case pgCode(err) == foreignKeyViolation: // the tenant vanished mid-statement
		return wrapf(store.ErrNotFound, "tenant %q", tenantID)
	case err != nil:
		return err
	case tag.RowsAffected() == 1:
		return nil
	}
	exists, err := q.tenantExists(ctx, tenantID)
	switch {
	case err != nil:
		return err
	case !exists:
		return wrapf(store.ErrNotFound, "tenant %q", tenantID)
	default:
		return store.ErrConflict
	}
}

func (q *queries) tenantExists(ctx context.Context, id string) (bool, error) {
	var exists bool
	err := q.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)`, id).Scan(&exists)
	return exists, err
}
