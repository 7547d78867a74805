// Package apitoken owns operators' bearer API tokens: their text form
// "<id>.<secret>" (16 and 32 lowercase hex characters), minting them (only the
// SHA-256 of the secret is stored), and resolving a presented token to the
// Principal an admin call runs as.
package apitoken

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// ErrUnauthenticated covers every way a presented token can fail (malformed, unknown,
// wrong secret, revoked): callers learn nothing about which.
var ErrUnauthenticated = errors.New("invalid or revoked API token")

// ErrPermissionDenied: the principal's role does not allow the operation.
var ErrPermissionDenied = errors.New("permission denied")

const (
	idBytes     = 8
	secretBytes = 16
)

// Principal is who an admin call runs as.
type Principal struct {
	TokenID  string
	TenantID string
	Role     string
}

// IsAdmin reports whether the principal may act across tenants.
func (p Principal) IsAdmin() bool { return p.Role == store.RoleAdmin }

// CanWrite reports whether the principal may change things (viewers may not).
func (p Principal) CanWrite() bool { return p.Role == store.RoleAdmin || p.Role == store.RoleOperator }

// Scope is the tenant filter for the principal's queries: "" (every tenant) for an
// admin, the principal's own tenant otherwise.
func (p Principal) Scope() string {
	if p.IsAdmin() {
		return ""
	}
	return p.TenantID
}

// Sees reports whether an object of tenantID is visible to the principal.
func (p Principal) Sees(tenantID string) bool { return p.IsAdmin() || p.TenantID == tenantID }

// Mint makes a new token. The returned text is shown once; rec is what to store.
func Mint(rnd io.Reader, tenantID, role, name string, now time.Time) (text string, rec store.APIToken, err error) {
	var raw [idBytes + secretBytes]byte
	if _, err := io.ReadFull(rnd, raw[:]); err != nil {
		return "", store.APIToken{}, fmt.Errorf("api token: random: %w", err)
	}
	id, secret := hex.EncodeToString(raw[:idBytes]), hex.EncodeToString(raw[idBytes:])
	return id + "." + secret, store.APIToken{
		ID:         id,
		TenantID:   tenantID,
		Role:       role,
		Name:       name,
		SecretHash: hash(secret),
		CreatedAt:  now,
	}, nil
}

// Parse splits a token's text; it never echoes the secret in an error.
func Parse(text string) (id, secret string, err error) {
	id, secret, ok := strings.Cut(strings.TrimSpace(text), ".")
	if !ok || len(id) != 2*idBytes || len(secret) != 2*secretBytes || !lowerHex(id) || !lowerHex(secret) {
		return "", "", ErrUnauthenticated
	}
	return id, secret, nil
}

// Authenticate resolves a presented token to its principal.
func Authenticate(ctx context.Context, st store.Tx, text string) (Principal, error) {
	id, secret, err := Parse(text)
	if err != nil {
		return Principal{}, err
	}
	rec, err := st.GetAPIToken(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		// Compare anyway so an unknown id costs the same as a wrong secret.
		subtle.ConstantTimeCompare(hash(secret), make([]byte, sha256.Size))
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, fmt.Errorf("look up api token: %w", err)
	}
	if subtle.ConstantTimeCompare(hash(secret), rec.SecretHash) != 1 || !rec.RevokedAt.IsZero() {
		return Principal{}, ErrUnauthenticated
	}
	return Principal{TokenID: rec.ID, TenantID: rec.TenantID, Role: rec.Role}, nil
}

func hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

func lowerHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
