package sqlstore

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Inserts use ON CONFLICT DO NOTHING and report a duplicate from the row count: on
// PostgreSQL a unique violation, raised, would abort the caller's transaction.
// Lists put NULL (the zero time) first in ascending and last in descending order,
// which is SQLite's default and PostgreSQL's with NULLS FIRST / NULLS LAST.

func (q Queries) CreateTenant(ctx context.Context, t store.Tenant) error {
	n, err := q.exec(ctx, `
		INSERT INTO tenants (id, name, kind, created_at)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT DO NOTHING`,
		t.ID, t.Name, t.Kind, q.D.Time(t.CreatedAt))
	if err == nil && n == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return q.wrapf(err, "create tenant %q", t.ID)
	}
	return nil
}

const tenantColumns = `id, name, kind, created_at`

func scanTenant(row Row) (store.Tenant, error) {
	var t store.Tenant
	err := row.Scan(&t.ID, &t.Name, &t.Kind, TimeCol{&t.CreatedAt})
	return t, err
}

func (q Queries) GetTenant(ctx context.Context, id string) (store.Tenant, error) {
	t, err := scanTenant(q.readRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = $1`, id))
	if err != nil {
		return store.Tenant{}, q.wrapf(err, "get tenant %q", id)
	}
	return t, nil
}

func (q Queries) ListTenants(ctx context.Context) ([]store.Tenant, error) {
	rows, err := q.read(ctx, `SELECT `+tenantColumns+` FROM tenants ORDER BY created_at NULLS FIRST, id`)
	tenants, err := Collect(rows, err, scanTenant)
	if err != nil {
		return nil, q.wrapf(err, "list tenants")
	}
	return tenants, nil
}

// CreateAPIToken stays in each store: how a missing tenant is detected differs.

const apiTokenColumns = `id, tenant_id, role, name, secret_hash, created_at, revoked_at`

func scanAPIToken(row Row) (store.APIToken, error) {
	var t store.APIToken
	err := row.Scan(&t.ID, &t.TenantID, &t.Role, &t.Name, BytesCol{&t.SecretHash}, TimeCol{&t.CreatedAt}, TimeCol{&t.RevokedAt})
	return t, err
}

func (q Queries) GetAPIToken(ctx context.Context, id string) (store.APIToken, error) {
	t, err := scanAPIToken(q.readRow(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = $1`, id))
	if err != nil {
		return store.APIToken{}, q.wrapf(err, "get api token %q", id)
	}
	return t, nil
}

func (q Queries) ListAPITokens(ctx context.Context, tenantID string) ([]store.APIToken, error) {
	query := `SELECT ` + apiTokenColumns + ` FROM api_tokens`
	var args []any
	if tenantID != "" {
		query += ` WHERE tenant_id = $1`
		args = append(args, tenantID)
	}
	query += ` ORDER BY created_at NULLS FIRST, id`
	rows, err := q.read(ctx, query, args...)
	toks, err := Collect(rows, err, scanAPIToken)
	if err != nil {
		return nil, q.wrapf(err, "list api tokens")
	}
	return toks, nil
}

func (q Queries) RevokeAPIToken(ctx context.Context, id string, at time.Time) error {
	// coalesce: revoking twice keeps the time the token actually stopped working.
	n, err := q.exec(ctx, `
		UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2`,
		q.D.Time(at), id)
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return q.wrapf(err, "revoke api token %q", id)
	}
	return nil
}

func (q Queries) InsertSigningKey(ctx context.Context, k store.SigningKey) error {
	n, err := q.exec(ctx, `
		INSERT INTO signing_keys (kid, private_key, public_key, created_at, retired_at)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT DO NOTHING`,
		k.KID, Bytes(k.PrivateKey), Bytes(k.PublicKey), q.D.Time(k.CreatedAt), q.D.Time(k.RetiredAt))
	if err == nil && n == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return q.wrapf(err, "insert signing key %q", k.KID)
	}
	return nil
}

func (q Queries) ListSigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	rows, err := q.read(ctx, `
		SELECT kid, private_key, public_key, created_at, retired_at
		FROM signing_keys
		ORDER BY created_at DESC NULLS LAST, kid DESC`)
	ks, err := Collect(rows, err, func(row Row) (store.SigningKey, error) {
		var k store.SigningKey
		err := row.Scan(&k.KID, BytesCol{&k.PrivateKey}, BytesCol{&k.PublicKey}, TimeCol{&k.CreatedAt}, TimeCol{&k.RetiredAt})
		return k, err
	})
	if err != nil {
		return nil, q.wrapf(err, "list signing keys")
	}
	return ks, nil
}

func (q Queries) RetireSigningKey(ctx context.Context, kid string, at time.Time) error {
	n, err := q.exec(ctx, `
		UPDATE signing_keys SET retired_at = coalesce(retired_at, $1) WHERE kid = $2`,
		q.D.Time(at), kid)
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return q.wrapf(err, "retire signing key %q", kid)
	}
	return nil
}

func (q Queries) DeleteSigningKeysRetiredBefore(ctx context.Context, cutoff time.Time) ([]string, error) {
	rows, err := q.write(ctx, `
		DELETE FROM signing_keys
		WHERE retired_at IS NOT NULL AND retired_at < $1
		RETURNING kid`, q.D.Time(cutoff))
	kids, err := Collect(rows, err, func(row Row) (string, error) {
		var kid string
		err := row.Scan(&kid)
		return kid, err
	})
	if err != nil {
		return nil, q.wrapf(err, "delete retired signing keys")
	}
	return kids, nil
}
