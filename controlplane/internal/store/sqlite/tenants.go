package sqlite

import (
	"context"
	"database/sql"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Inserts use ON CONFLICT DO NOTHING and report a duplicate from the row count, the
// same way as the PostgreSQL store, where a raised error would abort the caller's
// transaction.

func (q *queries) CreateTenant(ctx context.Context, t store.Tenant) error {
	n, err := changed(q.w.ExecContext(ctx, `
		INSERT INTO tenants (id, name, kind, created_at)
		VALUES (?, ?, ?, ?)
		ON CONFLICT DO NOTHING`,
		t.ID, t.Name, t.Kind, micros(t.CreatedAt)))
	if err != nil {
		return wrapf(err, "create tenant %q", t.ID)
	}
	if n == 0 {
		return wrapf(store.ErrConflict, "create tenant %q", t.ID)
	}
	return nil
}

const tenantColumns = `id, name, kind, created_at`

func scanTenant(row scanner) (store.Tenant, error) {
	var t store.Tenant
	err := row.Scan(&t.ID, &t.Name, &t.Kind, timeCol{&t.CreatedAt})
	return t, err
}

func (q *queries) GetTenant(ctx context.Context, id string) (store.Tenant, error) {
	t, err := scanTenant(q.r.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = ?`, id))
	if err != nil {
		return store.Tenant{}, wrapf(err, "get tenant %q", id)
	}
	return t, nil
}

func (q *queries) ListTenants(ctx context.Context) ([]store.Tenant, error) {
	rows, err := q.r.QueryContext(ctx, `SELECT `+tenantColumns+` FROM tenants ORDER BY created_at, id`)
	ts, err := collect(rows, err, scanTenant)
	if err != nil {
		return nil, wrapf(err, "list tenants")
	}
	return ts, nil
}

func (q *queries) CreateAPIToken(ctx context.Context, t store.APIToken) error {
	n, err := changed(q.w.ExecContext(ctx, `
		INSERT INTO api_tokens (id, tenant_id, role, name, secret_hash, created_at, revoked_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT DO NOTHING`,
		t.ID, t.TenantID, t.Role, t.Name, blob(t.SecretHash), micros(t.CreatedAt), micros(t.RevokedAt)))
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

const apiTokenColumns = `id, tenant_id, role, name, secret_hash, created_at, revoked_at`

func scanAPIToken(row scanner) (store.APIToken, error) {
	var t store.APIToken
	err := row.Scan(&t.ID, &t.TenantID, &t.Role, &t.Name, blobCol{&t.SecretHash}, timeCol{&t.CreatedAt}, timeCol{&t.RevokedAt})
	return t, err
}

func (q *queries) GetAPIToken(ctx context.Context, id string) (store.APIToken, error) {
	t, err := scanAPIToken(q.r.QueryRowContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = ?`, id))
	if err != nil {
		return store.APIToken{}, wrapf(err, "get api token %q", id)
	}
	return t, nil
}

func (q *queries) ListAPITokens(ctx context.Context, tenantID string) ([]store.APIToken, error) {
	query := `SELECT ` + apiTokenColumns + ` FROM api_tokens`
	var args []any
	if tenantID != "" {
		query += ` WHERE tenant_id = ?`
		args = append(args, tenantID)
	}
	query += ` ORDER BY created_at, id`
	rows, err := q.r.QueryContext(ctx, query, args...)
	ts, err := collect(rows, err, scanAPIToken)
	if err != nil {
		return nil, wrapf(err, "list api tokens")
	}
	return ts, nil
}

func (q *queries) RevokeAPIToken(ctx context.Context, id string, at time.Time) error {
	// coalesce: revoking twice keeps the time the token actually stopped working.
	n, err := changed(q.w.ExecContext(ctx, `
		UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`,
		micros(at), id))
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, "revoke api token %q", id)
	}
	return nil
}

func (q *queries) InsertSigningKey(ctx context.Context, k store.SigningKey) error {
	n, err := changed(q.w.ExecContext(ctx, `
		INSERT INTO signing_keys (kid, private_key, public_key, created_at, retired_at)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT DO NOTHING`,
		k.KID, blob(k.PrivateKey), blob(k.PublicKey), micros(k.CreatedAt), micros(k.RetiredAt)))
	if err == nil && n == 0 {
		err = store.ErrConflict
	}
	if err != nil {
		return wrapf(err, "insert signing key %q", k.KID)
	}
	return nil
}

func (q *queries) ListSigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	rows, err := q.r.QueryContext(ctx, `
		SELECT kid, private_key, public_key, created_at, retired_at
		FROM signing_keys
		ORDER BY created_at DESC, kid DESC`)
	ks, err := collect(rows, err, func(row scanner) (store.SigningKey, error) {
		var k store.SigningKey
		err := row.Scan(&k.KID, blobCol{&k.PrivateKey}, blobCol{&k.PublicKey}, timeCol{&k.CreatedAt}, timeCol{&k.RetiredAt})
		return k, err
	})
	if err != nil {
		return nil, wrapf(err, "list signing keys")
	}
	return ks, nil
}

func (q *queries) RetireSigningKey(ctx context.Context, kid string, at time.Time) error {
	n, err := changed(q.w.ExecContext(ctx, `
		UPDATE signing_keys SET retired_at = coalesce(retired_at, ?) WHERE kid = ?`,
		micros(at), kid))
	if err == nil && n == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return wrapf(err, "retire signing key %q", kid)
	}
	return nil
}

func (q *queries) DeleteSigningKeysRetiredBefore(ctx context.Context, cutoff time.Time) ([]string, error) {
	rows, err := q.w.QueryContext(ctx, `
		DELETE FROM signing_keys
		WHERE retired_at IS NOT NULL AND retired_at < ?
		RETURNING kid`, micros(cutoff))
	kids, err := collect(rows, err, func(row scanner) (string, error) {
		var kid string
		err := row.Scan(&kid)
		return kid, err
	})
	if err != nil {
		return nil, wrapf(err, "delete retired signing keys")
	}
	return kids, nil
}

// collect scans every row with scan; it takes QueryContext's results as they come.
func collect[T any](rows *sql.Rows, err error, scan func(scanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		x, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rows.Err()
}
