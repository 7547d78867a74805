// Package operators owns who may use the admin API: tenants, and the API tokens
// (a tenant and a role each) operators call it with. Admins create tenants and mint
// and revoke tokens; every change is audited in the transaction that makes it. A
// token's secret leaves this package once, in CreateToken's result, and is never
// logged or stored (apitoken keeps only its hash).
package operators

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// ErrInvalid wraps every refusal of a malformed request.
var ErrInvalid = errors.New("invalid request")

// ErrExists: a tenant of that name already exists.
var ErrExists = errors.New("already exists")

// ErrLastAdmin: revoking the token would leave no active admin token, and nobody able
// to mint another.
var ErrLastAdmin = errors.New("it is the last active admin API token: create another admin token first")

const maxNameLen = 128

// Roles are the roles a token may have, least to most.
var Roles = []string{store.RoleViewer, store.RoleOperator, store.RoleAdmin}

// Kinds are the tenant kinds.
var Kinds = []string{store.TenantPersonal, store.TenantTeam}

// Config wires a Service.
type Config struct {
	Store store.Store
	Now   func() time.Time
	Rand  io.Reader
}

// Service manages tenants and API tokens.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

func requireAdmin(p apitoken.Principal, what string) error {
	if !p.IsAdmin() {
		return fmt.Errorf("%w: role %q cannot %s", apitoken.ErrPermissionDenied, p.Role, what)
	}
	return nil
}

func validateName(what, s string, required bool) error {
	switch {
	case s == "" && required:
		return fmt.Errorf("%w: %s is required", ErrInvalid, what)
	case len(s) > maxNameLen:
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalid, what, maxNameLen)
	case !utf8.ValidString(s) || slices.ContainsFunc([]rune(s), unicode.IsControl):
		return fmt.Errorf("%w: %s must be printable text", ErrInvalid, what)
	}
	return nil
}

// CreateTenant makes a tenant: "u-<hex>" for a personal one, "t-<hex>" for a team.
// Names are unique, so operators can tell tenants apart.
func (s *Service) CreateTenant(ctx context.Context, p apitoken.Principal, name, kind string) (store.Tenant, error) {
	if err := requireAdmin(p, "create tenants"); err != nil {
		return store.Tenant{}, err
	}
	if err := validateName("name", name, true); err != nil {
		return store.Tenant{}, err
	}
	prefix := map[string]string{store.TenantPersonal: "u-", store.TenantTeam: "t-"}[kind]
	if prefix == "" {
		return store.Tenant{}, fmt.Errorf("%w: kind %q must be personal or team", ErrInvalid, kind)
	}
	var raw [8]byte
	if _, err := io.ReadFull(s.cfg.Rand, raw[:]); err != nil {
		return store.Tenant{}, fmt.Errorf("tenant id: random: %w", err)
	}
	now := s.cfg.Now().UTC()
	t := store.Tenant{ID: prefix + hex.EncodeToString(raw[:]), Name: name, Kind: kind, CreatedAt: now}
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		all, err := tx.ListTenants(ctx)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(all, func(o store.Tenant) bool { return o.Name == name }) {
			return fmt.Errorf("tenant %q: %w", name, ErrExists)
		}
		if err := tx.CreateTenant(ctx, t); err != nil {
			if errors.Is(err, store.ErrConflict) {
				// Another create of this name committed after the lookup above:
				// the schema's unique name caught it.
				return fmt.Errorf("tenant %q: %w", name, ErrExists)
			}
			return fmt.Errorf("create tenant: %w", err)
		}
		_, err = tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: t.ID, Actor: "op:" + p.TokenID, Action: "tenant.create", Result: "ok",
			Details: map[string]string{"tenant": t.ID, "name": name, "kind": kind},
		})
		return err
	})
	if err != nil {
		return store.Tenant{}, err
	}
	return t, nil
}

// ListTenants lists every tenant, oldest first.
func (s *Service) ListTenants(ctx context.Context, p apitoken.Principal) ([]store.Tenant, error) {
	if err := requireAdmin(p, "list tenants"); err != nil {
		return nil, err
	}
	return s.cfg.Store.ListTenants(ctx)
}

// CreateTokenRequest is an admin's request for an API token.
type CreateTokenRequest struct {
	// TenantID: "" for the caller's own tenant.
	TenantID string
	Role     string
	Name     string
}

// CreateToken mints a token. The text (with the secret) is returned once.
func (s *Service) CreateToken(ctx context.Context, p apitoken.Principal, req CreateTokenRequest) (string, store.APIToken, error) {
	if err := requireAdmin(p, "create API tokens"); err != nil {
		return "", store.APIToken{}, err
	}
	if !slices.Contains(Roles, req.Role) {
		return "", store.APIToken{}, fmt.Errorf("%w: role %q must be one of viewer, operator, admin", ErrInvalid, req.Role)
	}
	if err := validateName("name", req.Name, false); err != nil {
		return "", store.APIToken{}, err
	}
	tenantID := req.TenantID
	if tenantID == "" {
		tenantID = p.TenantID
	}
	now := s.cfg.Now().UTC()
	text, rec, err := apitoken.Mint(s.cfg.Rand, tenantID, req.Role, req.Name, now)
	if err != nil {
		return "", store.APIToken{}, err
	}
	err = s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.CreateAPIToken(ctx, rec); err != nil {
			return fmt.Errorf("create api token in tenant %q: %w", tenantID, err)
		}
		_, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: tenantID, Actor: "op:" + p.TokenID, Action: "api_token.create", Result: "ok",
			Details: map[string]string{"api_token": rec.ID, "role": rec.Role, "name": rec.Name},
		})
		return err
	})
	if err != nil {
		return "", store.APIToken{}, err
	}
	return text, rec, nil
}

// ListTokens lists the tokens the principal can see (its tenant's; every tenant's for
// an admin), oldest first.
func (s *Service) ListTokens(ctx context.Context, p apitoken.Principal) ([]store.APIToken, error) {
	return s.cfg.Store.ListAPITokens(ctx, p.Scope())
}

// RevokeToken revokes a token at once (idempotent: revoking again keeps the first
// time and audits nothing new). The last active admin token cannot be revoked.
func (s *Service) RevokeToken(ctx context.Context, p apitoken.Principal, id string) (store.APIToken, error) {
	if err := requireAdmin(p, "revoke API tokens"); err != nil {
		return store.APIToken{}, err
	}
	now := s.cfg.Now().UTC()
	var out store.APIToken
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		t, err := tx.GetAPIToken(ctx, id)
		if err != nil {
			return fmt.Errorf("api token %q: %w", id, err)
		}
		if !t.RevokedAt.IsZero() {
			out = t
			return nil
		}
		if t.Role == store.RoleAdmin {
			all, err := tx.ListAPITokens(ctx, "")
			if err != nil {
				return err
			}
			active := 0
			for _, o := range all {
				if o.Role == store.RoleAdmin && o.RevokedAt.IsZero() {
					active++
				}
			}
			if active <= 1 {
				return fmt.Errorf("api token %q: %w", id, ErrLastAdmin)
			}
		}
		if err := tx.RevokeAPIToken(ctx, id, now); err != nil {
			return fmt.Errorf("revoke api token %q: %w", id, err)
		}
		if _, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: t.TenantID, Actor: "op:" + p.TokenID, Action: "api_token.revoke", Result: "ok",
			Details: map[string]string{"api_token": id, "role": t.Role},
		}); err != nil {
			return err
		}
		out, err = tx.GetAPIToken(ctx, id)
		return err
	})
	if err != nil {
		return store.APIToken{}, err
	}
	return out, nil
}
