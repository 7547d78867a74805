// Package nodetoken owns the NodeSecurityToken: a compact JWS (EdDSA) issued by the
// control plane's signing key, naming the node, its tenant and security context, and
// bound through `cnf` to the fingerprint of the node's public key. The control plane
// verifies a token's signature every time it accepts it; Peek exists only so a
// daemon can show its own token's expiry and must never be used to decide trust.
package nodetoken

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// Issuer and Audience pin tokens to this protocol, so a JWT minted for anything
	// else by the same key can never pass as a node token.
	Issuer   = "aegis-controlplane"
	Audience = "aegis-edge-node"
)

var (
	// ErrInvalid: malformed, wrong algorithm, unknown kid, bad signature, wrong issuer
	// or audience, or missing claims.
	ErrInvalid = errors.New("node token invalid")
	// ErrExpired: a genuine token whose exp has passed.
	ErrExpired = errors.New("node token expired")
	// ErrUnknownKey: the token names a kid the KeySet does not hold. Errors wrapping
	// it also wrap ErrInvalid; a verifier may reload its keys once and try again, since
	// the kid may belong to a signing key created after the set was loaded.
	ErrUnknownKey = errors.New("node token signed by an unknown key")
)

// Confirmation binds the token to a key (RFC 7800 style).
type Confirmation struct {
	// KeyFingerprint is fingerprint.Of(node public key).
	KeyFingerprint string `json:"kfp"`
}

// Claims of a NodeSecurityToken.
type Claims struct {
	jwt.RegisteredClaims
	TenantID string `json:"tid"`
	// Scope is the tenant binding scope the token was issued under.
	Scope string `json:"scope,omitempty"`
	// SecurityContext names the local security-policy context the host evaluates
	// tool calls against; SecurityContextVersion changes when the server reassigns it.
	SecurityContext        string       `json:"sctx,omitempty"`
	SecurityContextVersion int64        `json:"sctxv,omitempty"`
	Cnf                    Confirmation `json:"cnf"`
}

// NodeID is the token's subject.
func (c Claims) NodeID() string { return c.Subject }

// JTI is the token's unique id.
func (c Claims) JTI() string { return c.ID }

// Expires returns exp (zero if absent).
func (c Claims) Expires() time.Time {
	if c.ExpiresAt == nil {
		return time.Time{}
	}
	return c.ExpiresAt.Time
}

// Signer issues tokens with one of the control plane's keys.
type Signer struct {
	KID string
	Key ed25519.PrivateKey
}

// Issue fills jti, iss, aud, iat and exp (iat = now, exp = now+ttl) and signs.
func (s Signer) Issue(c Claims, now time.Time, ttl time.Duration) (string, Claims, error) {
	if s.KID == "" || len(s.Key) != ed25519.PrivateKeySize {
		return "", Claims{}, errors.New("nodetoken: signer has no key")
	}
	if c.Subject == "" || c.TenantID == "" || c.Cnf.KeyFingerprint == "" {
		return "", Claims{}, errors.New("nodetoken: sub, tid and cnf are required")
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", Claims{}, fmt.Errorf("nodetoken: jti: %w", err)
	}
	now = now.UTC().Truncate(time.Second)
	c.ID = hex.EncodeToString(jti[:])
	c.Issuer = Issuer
	c.Audience = jwt.ClaimStrings{Audience}
	c.IssuedAt = jwt.NewNumericDate(now)
	c.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	c.NotBefore = nil
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	t.Header["kid"] = s.KID
	signed, err := t.SignedString(s.Key)
	if err != nil {
		return "", Claims{}, fmt.Errorf("nodetoken: sign: %w", err)
	}
	return signed, c, nil
}

// KeySet holds the control plane's verification keys by kid. Old keys stay until
// every token they signed has expired, so the signing key can rotate without
// invalidating live tokens. Safe for concurrent use.
type KeySet struct {
	mu   sync.RWMutex
	keys map[string]ed25519.PublicKey
}

// NewKeySet returns an empty set.
func NewKeySet() *KeySet { return &KeySet{keys: map[string]ed25519.PublicKey{}} }

// Add registers (or replaces) a verification key.
func (ks *KeySet) Add(kid string, pub ed25519.PublicKey) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.keys[kid] = pub
}

// KIDs lists the kids held, in no particular order.
func (ks *KeySet) KIDs() []string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	out := make([]string, 0, len(ks.keys))
	for kid := range ks.keys {
		out = append(out, kid)
	}
	return out
}

// Remove forgets a verification key.
func (ks *KeySet) Remove(kid string) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	delete(ks.keys, kid)
}

func (ks *KeySet) lookup(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	pub, ok := ks.keys[kid]
	if !ok {
		return nil, fmt.Errorf("%w: kid %q", ErrUnknownKey, kid)
	}
	return pub, nil
}

// Has reports whether the set holds kid.
func (ks *KeySet) Has(kid string) bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	_, ok := ks.keys[kid]
	return ok
}

// Verify checks signature, algorithm, issuer, audience and expiry at now, and returns
// the claims. Errors wrap ErrInvalid or ErrExpired (only for a correctly signed token).
func (ks *KeySet) Verify(token string, now time.Time) (Claims, error) {
	c, _, err := ks.VerifyKID(token, now)
	return c, err
}

// VerifyKID is Verify that also says which key signed the token (its kid).
func (ks *KeySet) VerifyKID(token string, now time.Time) (Claims, string, error) {
	var c Claims
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithIssuer(Issuer),
		jwt.WithAudience(Audience),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	t, err := p.ParseWithClaims(token, &c, ks.lookup)
	var kid string
	if t != nil {
		kid, _ = t.Header["kid"].(string)
	}
	if err != nil {
		// jwt checks the signature before the time claims, so ErrTokenExpired here
		// means the token is genuine but old.
		if errors.Is(err, jwt.ErrTokenExpired) && !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
			return c, kid, fmt.Errorf("%w: %v", ErrExpired, err)
		}
		if errors.Is(err, ErrUnknownKey) {
			return Claims{}, "", fmt.Errorf("%w: %w", ErrInvalid, ErrUnknownKey)
		}
		return Claims{}, "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if c.Subject == "" || c.TenantID == "" || c.ID == "" || c.Cnf.KeyFingerprint == "" {
		return Claims{}, "", fmt.Errorf("%w: missing sub, tid, jti or cnf", ErrInvalid)
	}
	return c, kid, nil
}

// Peek decodes a token WITHOUT verifying it, for a daemon to display its own token's
// expiry. Never use the result to decide whether to trust anything.
func Peek(token string) (Claims, error) {
	var c Claims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &c); err != nil {
		return Claims{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return c, nil
}
