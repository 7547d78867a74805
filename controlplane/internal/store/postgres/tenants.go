package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Inserts use ON CONFLICT DO NOTHING and report a duplicate from the row count: a
// unique violation, raised, would abort the caller's transaction.

func (q *queries) CreateTenant(ctx context.Context, t store.Tenant) error {
	tag, err := q.db.Exec(ctx, `
		INSERT INTO tenants (id, name, kind, created_at)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT DO NOTHING`,
		t.ID, t.Name, t.Kind, ts(t.CreatedAt))
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return wrapf(err, "create tenant %q", t.ID)
	}
	return nil
}

const tenantColumns = `id, name, kind, created_at`

func scanTenant(row pgx.Row) (store.Tenant, error) {
	var t store.Tenant
	err := row.Scan(&t.ID, &t.Name, &t.Kind, timeCol{&t.CreatedAt})
	return t, err
}

func (q *queries) GetTenant(ctx context.Context, id string) (store.Tenant, error) {
	t, err := scanTenant(q.db.QueryRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = $1`, id))
	if err != nil {
		return store.Tenant{}, wrapf(err, "get tenant %q", id)
	}
	return t, nil
}

// Lists put NULL (the zero time) where SQLite does, first in ascending and last in
// descending order, so that both stores list rows alike.

func (q *queries) ListTenants(ctx context.Context) ([]store.Tenant, error) {
	rows, err := q.db.Query(ctx, `SELECT `+tenantColumns+` FROM tenants ORDER BY created_at NULLS FIRST, id`)
	tenants, err := collect(rows, err, scanTenant)
	if err != nil {
		return nil, wrapf(err, "list tenants")
	}
	return tenants, nil
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

func (q *queries) CreateAPIToken(ctx context.Context, t store.APIToken) error {
	err := q.insertForTenant(ctx, t.TenantID, `
		INSERT INTO api_tokens (id, tenant_id, role, name, secret_hash, created_at, revoked_at)
		SELECT $1, tenants.id, $3, $4, $5::bytea, $6::timestamptz, $7::timestamptz
		FROM tenants WHERE tenants.id = $2
		ON CONFLICT DO NOTHING`,
		t.ID, t.TenantID, t.Role, t.Name, bytesArg(t.SecretHash), ts(t.CreatedAt), ts(t.RevokedAt))
	if err != nil {
		return wrapf(err, "create api token %q", t.ID)
	}
	return nil
}

const apiTokenColumns = `id, tenant_id, role, name, secret_hash, created_at, revoked_at`

func scanAPIToken(row pgx.Row) (store.APIToken, error) {
	var t store.APIToken
	err := row.Scan(&t.ID, &t.TenantID, &t.Role, &t.Name, bytesCol{&t.SecretHash}, timeCol{&t.CreatedAt}, timeCol{&t.RevokedAt})
	return t, err
}

func (q *queries) GetAPIToken(ctx context.Context, id string) (store.APIToken, error) {
	t, err := scanAPIToken(q.db.QueryRow(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = $1`, id))
	if err != nil {
		return store.APIToken{}, wrapf(err, "get api token %q", id)
	}
	return t, nil
}

func (q *queries) ListAPITokens(ctx context.Context, tenantID string) ([]store.APIToken, error) {
	query := `SELECT ` + apiTokenColumns + ` FROM api_tokens`
	var args []any
	if tenantID != "" {
		query += ` WHERE tenant_id = $1`
		args = append(args, tenantID)
	}
	query += ` ORDER BY created_at NULLS FIRST, id`
	rows, err := q.db.Query(ctx, query, args...)
	toks, err := collect(rows, err, scanAPIToken)
	if err != nil {
		return nil, wrapf(err, "list api tokens")
	}
	return toks, nil
}

func (q *queries) RevokeAPIToken(ctx context.Context, id string, at time.Time) error {
	// coalesce: revoking twice keeps the time the token actually stopped working.
	tag, err := q.db.Exec(ctx, `
		UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2`,
		ts(at), id)
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, "revoke api token %q", id)
	}
	return nil
}

func (q *queries) InsertSigningKey(ctx context.Context, k store.SigningKey) error {
	tag, err := q.db.Exec(ctx, `
		INSERT INTO signing_keys (kid, private_key, public_key, created_at, retired_at)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT DO NOTHING`,
		k.KID, bytesArg(k.PrivateKey), bytesArg(k.PublicKey), ts(k.CreatedAt), ts(k.RetiredAt))
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return wrapf(err, "insert signing key %q", k.KID)
	}
	return nil
}

func (q *queries) ListSigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	rows, err := q.db.Query(ctx, `
		SELECT kid, private_key, public_key, created_at, retired_at
		FROM signing_keys
		ORDER BY created_at DESC NULLS LAST, kid DESC`)
	ks, err := collect(rows, err, func(row pgx.Row) (store.SigningKey, error) {
		var k store.SigningKey
		err := row.Scan(&k.KID, bytesCol{&k.PrivateKey}, bytesCol{&k.PublicKey}, timeCol{&k.CreatedAt}, timeCol{&k.RetiredAt})
		return k, err
	})
	if err != nil {
		return nil, wrapf(err, "list signing keys")
	}
	return ks, nil
}

func (q *queries) RetireSigningKey(ctx context.Context, kid string, at time.Time) error {
	tag, err := q.db.Exec(ctx, `
		UPDATE signing_keys SET retired_at = coalesce(retired_at, $1) WHERE kid = $2`,
		ts(at), kid)
	if err == nil && tag.RowsAffected() == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, "retire signing key %q", kid)
	}
	return nil
}

func (q *queries) DeleteSigningKeysRetiredBefore(ctx context.Context, cutoff time.Time) ([]string, error) {
	rows, err := q.db.Query(ctx, `
		DELETE FROM signing_keys
		WHERE retired_at IS NOT NULL AND retired_at < $1
		RETURNING kid`, ts(cutoff))
	kids, err := collect(rows, err, func(row pgx.Row) (string, error) {
		var kid string
		err := row.Scan(&kid)
		return kid, err
	})
	if err != nil {
		return nil, wrapf(err, "delete retired signing keys")
	}
	return kids, nil
}
