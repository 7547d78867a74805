// Package tokens owns the control plane's side of NodeSecurityTokens: issuing them
// with the newest signing key, the KeySet every token is verified against (all keys,
// retired ones included, until their tokens have expired), and the in-memory
// blacklist consulted on every envelope.
package tokens

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/golang-jwt/jwt/v5"
)

// Issuer signs node tokens. Safe for concurrent use.
type Issuer struct {
	keys   *nodetoken.KeySet
	signer nodetoken.Signer
	ttl    time.Duration
}

// LoadIssuer loads every signing key from the store into a KeySet and signs with the
// newest unretired one.
func LoadIssuer(ctx context.Context, st store.Tx, ttl time.Duration) (*Issuer, error) {
	all, err := st.ListSigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	is := &Issuer{keys: nodetoken.NewKeySet(), ttl: ttl}
	for _, k := range all {
		if len(k.PublicKey) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("signing key %s: public key is %d bytes", k.KID, len(k.PublicKey))
		}
		is.keys.Add(k.KID, ed25519.PublicKey(k.PublicKey))
		// ListSigningKeys is newest first, so the first active key wins.
		if is.signer.KID == "" && k.RetiredAt.IsZero() && len(k.PrivateKey) == ed25519.PrivateKeySize {
			is.signer = nodetoken.Signer{KID: k.KID, Key: ed25519.PrivateKey(k.PrivateKey)}
		}
	}
	if is.signer.KID == "" {
		return nil, errors.New("no active token-signing key in the store")
	}
	return is, nil
}

// KeySet is what envelopes' tokens are verified against.
func (is *Issuer) KeySet() *nodetoken.KeySet { return is.keys }

// TTL is the lifetime of issued tokens.
func (is *Issuer) TTL() time.Duration { return is.ttl }

// Issued is a freshly signed token and the row that records it.
type Issued struct {
	Token  string
	Claims nodetoken.Claims
	Record store.NodeToken
}

// Issue signs a token for the node bound to pub.
func (is *Issuer) Issue(d store.Daemon, pub []byte, now time.Time) (Issued, error) {
	kfp := fingerprint.Of(pub)
	text, claims, err := is.signer.Issue(nodetoken.Claims{
		RegisteredClaims:       jwt.RegisteredClaims{Subject: d.NodeID},
		TenantID:               d.TenantID,
		Scope:                  "tenant:" + d.TenantID,
		SecurityContext:        d.SecurityContext,
		SecurityContextVersion: d.SecurityContextVersion,
		Cnf:                    nodetoken.Confirmation{KeyFingerprint: kfp},
	}, now, is.ttl)
	if err != nil {
		return Issued{}, err
	}
	return Issued{Token: text, Claims: claims, Record: store.NodeToken{
		JTI:            claims.JTI(),
		NodeID:         d.NodeID,
		KeyFingerprint: kfp,
		IssuedAt:       claims.IssuedAt.Time,
		ExpiresAt:      claims.Expires(),
	}}, nil
}

// Blacklist is the in-memory copy of token_blacklist, warmed from the store at start
// and updated by this process after every commit that adds to it. With several
// replicas, entries written by another replica arrive through PostgreSQL
// LISTEN/NOTIFY (a later issue); until then a replica only knows its own writes and
// what it loaded at start.
type Blacklist struct {
	mu      sync.RWMutex
	entries map[string]store.BlacklistEntry
	metrics *metrics.Metrics
}

// NewBlacklist returns an empty blacklist reporting its size to m (may be nil).
func NewBlacklist(m *metrics.Metrics) *Blacklist {
	return &Blacklist{entries: map[string]store.BlacklistEntry{}, metrics: m}
}

// Warm loads every unexpired entry from the store.
func (b *Blacklist) Warm(ctx context.Context, st store.Tx, now time.Time) error {
	list, err := st.ListBlacklist(ctx, now)
	if err != nil {
		return fmt.Errorf("warm token blacklist: %w", err)
	}
	for _, e := range list {
		b.Add(e)
	}
	return nil
}

// Add records entries that are now committed in the store.
func (b *Blacklist) Add(es ...store.BlacklistEntry) {
	b.mu.Lock()
	for _, e := range es {
		b.entries[e.JTI] = e
	}
	n := len(b.entries)
	b.mu.Unlock()
	b.metrics.BlacklistSize(n)
}

// Lookup returns the entry for jti, if blacklisted.
func (b *Blacklist) Lookup(jti string) (store.BlacklistEntry, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	e, ok := b.entries[jti]
	return e, ok
}

// Purge drops entries whose token has expired anyway; returns how many.
func (b *Blacklist) Purge(now time.Time) int {
	b.mu.Lock()
	n := 0
	for jti, e := range b.entries {
		if !e.ExpiresAt.After(now) {
			delete(b.entries, jti)
			n++
		}
	}
	size := len(b.entries)
	b.mu.Unlock()
	b.metrics.BlacklistSize(size)
	return n
}

// Len is the number of entries held.
func (b *Blacklist) Len() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.entries)
}
