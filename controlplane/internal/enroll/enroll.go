// Package enroll owns enrollment: operators minting, listing and revoking single-use
// enrollment tokens, and a host redeeming one for an identity (node id, tenant, tags)
// and its first NodeSecurityToken. A redemption is one store transaction: on any
// refusal nothing is written.
package enroll

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
	"unicode"

	"github.com/aegis-edge/aegis/api/enrolltoken"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/challenge"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/tags"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
)

// Enrollment token lifetimes.
const (
	DefaultTTL = 15 * time.Minute
	MinTTL     = time.Second
	MaxTTL     = 24 * time.Hour
	maxNameLen = 128
)

// ErrInvalid wraps every refusal of an operator's malformed request.
var ErrInvalid = errors.New("invalid request")

// ErrAlreadyUsed: revoking a token a host has already enrolled with would change
// nothing (the host's identity does not depend on the token any more).
var ErrAlreadyUsed = errors.New("enrollment token already used")

// Config wires a Service.
type Config struct {
	Store   store.Store
	Issuer  *tokens.Issuer
	Now     func() time.Time
	Rand    io.Reader
	Metrics *metrics.Metrics
	// CADER is the CA certificate tokens pin; AdvertiseURL the server URL they carry.
	CADER        []byte
	AdvertiseURL string
}

// Service implements enrollment.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// CreateTokenRequest is an operator's request for an enrollment token.
type CreateTokenRequest struct {
	// TenantID: "" for the caller's own tenant; only admins may name another.
	TenantID string
	Name     string
	Tags     []string
	// TTL: 0 for DefaultTTL.
	TTL time.Duration
}

// CreateToken mints a token; the text (with the secret) is returned once and only its
// hash is stored.
func (s *Service) CreateToken(ctx context.Context, p apitoken.Principal, req CreateTokenRequest) (string, store.EnrollmentToken, error) {
	if !p.CanWrite() {
		return "", store.EnrollmentToken{}, fmt.Errorf("%w: role %q cannot create enrollment tokens", apitoken.ErrPermissionDenied, p.Role)
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < MinTTL || ttl > MaxTTL {
		return "", store.EnrollmentToken{}, fmt.Errorf("%w: ttl %s must be between %s and %s", ErrInvalid, ttl, MinTTL, MaxTTL)
	}
	tags, err := ValidateTags(req.Tags)
	if err != nil {
		return "", store.EnrollmentToken{}, err
	}
	if err := validateName("name", req.Name); err != nil {
		return "", store.EnrollmentToken{}, err
	}
	tenantID := req.TenantID
	if tenantID == "" {
		tenantID = p.TenantID
	}
	if !p.Sees(tenantID) {
		return "", store.EnrollmentToken{}, fmt.Errorf("tenant %q: %w", tenantID, store.ErrNotFound)
	}
	if _, err := s.cfg.Store.GetTenant(ctx, tenantID); err != nil {
		return "", store.EnrollmentToken{}, fmt.Errorf("tenant %q: %w", tenantID, err)
	}
	tok, err := enrolltoken.New(s.cfg.CADER, s.cfg.AdvertiseURL)
	if err != nil {
		return "", store.EnrollmentToken{}, err
	}
	now := s.cfg.Now().UTC()
	rec := store.EnrollmentToken{
		ID:         tok.ID,
		TenantID:   tenantID,
		Name:       req.Name,
		SecretHash: enrolltoken.SecretHash(tok.Secret),
		Tags:       tags,
		CreatedBy:  p.TokenID,
		CreatedAt:  now,
		ExpiresAt:  now.Add(ttl),
	}
	err = s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.CreateEnrollmentToken(ctx, rec); err != nil {
			return fmt.Errorf("store enrollment token: %w", err)
		}
		_, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: tenantID, Actor: "op:" + p.TokenID, Action: "enrollment_token.create", Result: "ok",
			Details: map[string]string{"enrollment_token": rec.ID, "ttl": ttl.String()},
		})
		return err
	})
	if err != nil {
		return "", store.EnrollmentToken{}, err
	}
	return tok.String(), rec, nil
}

// ListTokens lists the tokens the principal can see, newest first.
func (s *Service) ListTokens(ctx context.Context, p apitoken.Principal) ([]store.EnrollmentToken, error) {
	return s.cfg.Store.ListEnrollmentTokens(ctx, p.Scope())
}

// RevokeToken revokes a token of the principal's tenant (any tenant for an admin).
func (s *Service) RevokeToken(ctx context.Context, p apitoken.Principal, id string) error {
	if !p.CanWrite() {
		return fmt.Errorf("%w: role %q cannot revoke enrollment tokens", apitoken.ErrPermissionDenied, p.Role)
	}
	now := s.cfg.Now().UTC()
	return s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		t, err := tx.GetEnrollmentToken(ctx, id)
		if err != nil {
			return fmt.Errorf("enrollment token %q: %w", id, err)
		}
		if !p.Sees(t.TenantID) {
			return fmt.Errorf("enrollment token %q: %w", id, store.ErrNotFound)
		}
		if !t.UsedAt.IsZero() && t.RevokedAt.IsZero() {
			return fmt.Errorf("%w by host %s at %s; nothing was changed", ErrAlreadyUsed, t.UsedBy, t.UsedAt.UTC().Format(time.RFC3339))
		}
		if err := tx.RevokeEnrollmentToken(ctx, p.Scope(), id, now); err != nil {
			return fmt.Errorf("revoke enrollment token %q: %w", id, err)
		}
		_, err = tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: t.TenantID, Actor: "op:" + p.TokenID, Action: "enrollment_token.revoke", Result: "ok",
			Details: map[string]string{"enrollment_token": id},
		})
		return err
	})
}

// State is the token's state as operators see it.
func State(t store.EnrollmentToken, now time.Time) string {
	switch {
	case !t.RevokedAt.IsZero():
		return "revoked"
	case !t.UsedAt.IsZero():
		return "used"
	case !now.Before(t.ExpiresAt):
		return "expired"
	}
	return "active"
}

// ValidateTags checks every tag and drops duplicates (keeping the first occurrence).
func ValidateTags(ts []string) ([]string, error) {
	if err := tags.Check(ts); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

func validateName(field, v string) error {
	if len(v) > maxNameLen {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalid, field, maxNameLen)
	}
	for _, r := range v {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: %s contains a non-printable character", ErrInvalid, field)
		}
	}
	return nil
}

// Request is a host's enrollment.
type Request struct {
	TokenID, Secret string
	PublicKey       []byte
	Nonce           string
	Signature       []byte
	DisplayName     string
	Hostname, OS    string
}

// Result is a successful enrollment.
type Result struct {
	Daemon store.Daemon
	Tenant store.Tenant
	Token  tokens.Issued
}

// Enroll redeems an enrollment token. Refusals are *rejection.Error with the reason a
// daemon shows its operator; an unknown token id and a wrong secret are one refusal
// with one message, so a prober cannot tell them apart.
func (s *Service) Enroll(ctx context.Context, req Request) (Result, error) {
	res, err := s.enroll(ctx, req)
	if err != nil {
		result := "error"
		if r, ok := rejection.As(err); ok {
			result = reject.Short(r.Reason)
		}
		s.cfg.Metrics.Enrollment(result)
		return Result{}, err
	}
	s.cfg.Metrics.Enrollment("ok")
	return res, nil
}

func (s *Service) enroll(ctx context.Context, req Request) (Result, error) {
	for field, v := range map[string]string{"display_name": req.DisplayName, "hostname": req.Hostname, "os": req.OS} {
		if err := validateName(field, v); err != nil {
			return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "%v", err)
		}
	}
	invalidToken := rejection.New(edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_INVALID, "enrollment token is not valid: check it was copied whole, or create a new one")
	now := s.cfg.Now().UTC()
	nodeID, err := newNodeID(s.cfg.Rand)
	if err != nil {
		return Result{}, err
	}
	// The nonce is spent in a transaction of its own, committed whatever follows: a
	// refusal inside the enrollment's transaction would roll the spending back, and
	// one challenge would buy any number of secret guesses.
	if err := challenge.Consume(ctx, s.cfg.Store, req.Nonce, challenge.PurposeEnroll, "", now); err != nil {
		return Result{}, err
	}
	var res Result
	err = s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		if len(req.PublicKey) != ed25519.PublicKeySize {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_KEY_INVALID, "public key is %d bytes, want a %d-byte Ed25519 key", len(req.PublicKey), ed25519.PublicKeySize)
		}
		if !ed25519.Verify(req.PublicKey, seal.EnrollMessage(req.Nonce, req.TokenID, req.PublicKey), req.Signature) {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, "proof of possession does not verify under the presented key")
		}
		et, err := tx.GetEnrollmentToken(ctx, req.TokenID)
		if errors.Is(err, store.ErrNotFound) {
			return invalidToken
		}
		if err != nil {
			return fmt.Errorf("look up enrollment token: %w", err)
		}
		if !enrolltoken.SecretMatches(req.Secret, et.SecretHash) {
			return invalidToken
		}
		switch err := tx.ConsumeEnrollmentToken(ctx, et.ID, nodeID, now); {
		case err == nil:
		case errors.Is(err, store.ErrTokenUsed):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_USED, "enrollment token was already used: create a new one")
		case errors.Is(err, store.ErrTokenExpired):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_EXPIRED, "enrollment token has expired: create a new one")
		case errors.Is(err, store.ErrTokenRevoked):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_REVOKED, "enrollment token was revoked: create a new one")
		case errors.Is(err, store.ErrNotFound):
			return invalidToken
		default:
			return fmt.Errorf("consume enrollment token: %w", err)
		}
		switch err := tx.ClaimPublicKey(ctx, req.PublicKey, nodeID, now); {
		case errors.Is(err, store.ErrKeyInUse):
			return s.keyInUse(ctx, tx, req.PublicKey)
		case err != nil:
			return fmt.Errorf("claim public key: %w", err)
		}
		tenant, err := tx.GetTenant(ctx, et.TenantID)
		if err != nil {
			return fmt.Errorf("tenant of enrollment token: %w", err)
		}
		name := req.DisplayName
		if name == "" {
			name = req.Hostname
		}
		if name == "" {
			name = nodeID
		}
		d := store.Daemon{
			NodeID:      nodeID,
			TenantID:    et.TenantID,
			DisplayName: name,
			Tags:        et.Tags,
			OS:          req.OS,
			Hostname:    req.Hostname,
			PublicKey:   req.PublicKey,
			Status:      store.DaemonActive,
			EnrolledAt:  now,
		}
		if err := tx.InsertDaemon(ctx, d); err != nil {
			return fmt.Errorf("insert daemon: %w", err)
		}
		issued, err := s.cfg.Issuer.Issue(d, req.PublicKey, now)
		if err != nil {
			return err
		}
		if err := tx.InsertNodeToken(ctx, issued.Record); err != nil {
			return fmt.Errorf("record node token: %w", err)
		}
		if _, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: d.TenantID, Actor: "node:" + nodeID, Action: "enroll", NodeID: nodeID, Result: "ok",
			Details: map[string]string{"enrollment_token": et.ID, "key_fingerprint": fingerprint.Of(req.PublicKey)},
		}); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		res = Result{Daemon: d, Tenant: tenant, Token: issued}
		return nil
	})
	return res, err
}

// keyInUse says why a key cannot be enrolled: a revoked node's key is refused as
// revoked, so a host whose identity was revoked learns that (and that it must make a
// new key), not merely that the key is taken.
func (s *Service) keyInUse(ctx context.Context, tx store.Tx, key []byte) error {
	inUse := rejection.New(edgev1.RejectReason_REJECT_REASON_KEY_IN_USE, "this public key is already bound to a node: generate a new key")
	owner, err := tx.KeyOwner(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return inUse
	}
	if err != nil {
		return fmt.Errorf("owner of public key: %w", err)
	}
	d, err := tx.GetDaemon(ctx, owner)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return inUse
	case err != nil:
		return fmt.Errorf("owner of public key: %w", err)
	case d.Status == store.DaemonRevoked:
		return rejection.New(edgev1.RejectReason_REJECT_REASON_REVOKED, "this key belonged to node %s, which was revoked: remove it (aegis edge logout) and enroll with a new key", owner)
	}
	return inUse
}

func newNodeID(rnd io.Reader) (string, error) {
	var b [6]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", fmt.Errorf("node id: random: %w", err)
	}
	return "n-" + hex.EncodeToString(b[:]), nil
}
