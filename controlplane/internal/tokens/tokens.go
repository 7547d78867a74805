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
//
// The signing keys live in the store, where `controlplane keys rotate` (another
// process) may change them at any time: Reload picks the change up, and Verify
// reloads by itself, at most once per missReloadEvery, when a token names a kid it
// does not know yet (a token another replica signed with a key this one has not
// loaded).
type Issuer struct {
	st   store.Tx
	keys *nodetoken.KeySet
	ttl  time.Duration

	mu     sync.RWMutex
	signer nodetoken.Signer

	missMu     sync.Mutex
	lastMissAt time.Time // wall clock: this only bounds database reads

	// verified holds the tokens whose signature is established, so that a token is
	// parsed and its signature verified once per process rather than once per
	// request (a rotation presents the token the previous one issued here).
	verified *verifiedCache
}

// missReloadEvery bounds the reloads a stream of tokens with unknown kids can cause.
const missReloadEvery = time.Second

// LoadIssuer loads every signing key from the store into a KeySet and signs with the
// newest unretired one.
func LoadIssuer(ctx context.Context, st store.Tx, ttl time.Duration) (*Issuer, error) {
	is := &Issuer{st: st, keys: nodetoken.NewKeySet(), ttl: ttl, verified: newVerifiedCache()}
	if _, err := is.Reload(ctx); err != nil {
		return nil, err
	}
	return is, nil
}

// Reload reads the signing keys again: keys added since are verified from now on,
// deleted ones no longer are, and the newest unretired key becomes the signer. It
// reports whether the signer changed. On error nothing changes.
func (is *Issuer) Reload(ctx context.Context) (changed bool, err error) {
	all, err := is.st.ListSigningKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("load signing keys: %w", err)
	}
	var signer nodetoken.Signer
	present := map[string]ed25519.PublicKey{}
	for _, k := range all {
		if len(k.PublicKey) != ed25519.PublicKeySize {
			return false, fmt.Errorf("signing key %s: public key is %d bytes", k.KID, len(k.PublicKey))
		}
		present[k.KID] = ed25519.PublicKey(k.PublicKey)
		// ListSigningKeys is newest first, so the first active key wins.
		if signer.KID == "" && k.RetiredAt.IsZero() && len(k.PrivateKey) == ed25519.PrivateKeySize {
			signer = nodetoken.Signer{KID: k.KID, Key: ed25519.PrivateKey(k.PrivateKey)}
		}
	}
	if signer.KID == "" {
		return false, errors.New("no active token-signing key in the store")
	}
	// Add before removing, so no moment passes without a key that is in the store.
	for kid, pub := range present {
		is.keys.Add(kid, pub)
	}
	for _, kid := range is.keys.KIDs() {
		if _, ok := present[kid]; !ok {
			is.keys.Remove(kid)
		}
	}
	is.mu.Lock()
	changed = is.signer.KID != signer.KID
	is.signer = signer
	is.mu.Unlock()
	return changed, nil
}

// ActiveKID is the kid new tokens are signed with.
func (is *Issuer) ActiveKID() string {
	is.mu.RLock()
	defer is.mu.RUnlock()
	return is.signer.KID
}

// Verify is KeySet().Verify, except that a token naming a kid this process has not
// loaded makes it reload the keys from the store (at most once per second across all
// callers) and try once more. A token signed by a key the store does not hold stays
// invalid.
//
// A token verified before (or issued here) is answered from memory by its exact
// text, with its expiry and its signing key's presence checked again at now; the
// answer is the same as parsing it again would give.
func (is *Issuer) Verify(ctx context.Context, token string, now time.Time) (nodetoken.Claims, error) {
	key := tokenKey(token)
	if v, ok := is.verified.get(key); ok {
		switch {
		case !is.keys.Has(v.kid):
			// Its signing key was removed since: parse it, for the same answer.
			is.verified.drop(key)
		case !now.Before(v.claims.Expires()):
			return v.claims, fmt.Errorf("%w: expired at %s", nodetoken.ErrExpired, v.claims.Expires().UTC().Format(time.RFC3339))
		default:
			return v.claims, nil
		}
	}
	return is.verify(ctx, token, now)
}

// verify parses and verifies token, and caches it when it is good.
func (is *Issuer) verify(ctx context.Context, token string, now time.Time) (nodetoken.Claims, error) {
	c, kid, err := is.keys.VerifyKID(token, now)
	if err == nil {
		is.remember(token, kid, c)
	}
	if !errors.Is(err, nodetoken.ErrUnknownKey) {
		return c, err
	}
	is.missMu.Lock()
	reload := time.Since(is.lastMissAt) >= missReloadEvery
	if reload {
		is.lastMissAt = time.Now()
		if _, rerr := is.Reload(ctx); rerr != nil {
			is.missMu.Unlock()
			return c, fmt.Errorf("%w (reloading signing keys: %v)", err, rerr)
		}
	}
	is.missMu.Unlock()
	if !reload {
		return c, err
	}
	c, kid, err = is.keys.VerifyKID(token, now)
	if err == nil {
		is.remember(token, kid, c)
	}
	return c, err
}

// remember caches a verified token. One with a not-before time is not cached: the
// hit path checks expiry only.
func (is *Issuer) remember(token, kid string, c nodetoken.Claims) {
	if kid == "" || c.NotBefore != nil {
		return
	}
	is.verified.put(tokenKey(token), verifiedToken{kid: kid, claims: c})
}

// PurgeVerified forgets the cached tokens that have expired.
func (is *Issuer) PurgeVerified(now time.Time) { is.verified.purge(now) }

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
	is.mu.RLock()
	signer := is.signer
	is.mu.RUnlock()
	text, claims, err := signer.Issue(nodetoken.Claims{
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
	// Signed here with a loaded key: as verified as a token can be.
	is.remember(text, signer.KID, claims)
	return Issued{Token: text, Claims: claims, Record: store.NodeToken{
		JTI:            claims.JTI(),
		NodeID:         d.NodeID,
		KeyFingerprint: kfp,
		IssuedAt:       claims.IssuedAt.Time,
		ExpiresAt:      claims.Expires(),
	}}, nil
}

// Blacklist is the in-memory copy of token_blacklist, warmed from the store at start
// and updated by this process after every commit that adds to it (Add). With several
// replicas, Add also hands the entries to the publish hook, and entries written by
// another replica arrive through PostgreSQL LISTEN/NOTIFY (Learn); after the
// notifications were interrupted, the server warms it again.
type Blacklist struct {
	mu      sync.RWMutex
	entries map[string]store.BlacklistEntry
	metrics *metrics.Metrics
	publish func([]store.BlacklistEntry)
}

// OnAdd makes every later Add hand its entries to publish (after adding them), so
// the other replicas learn them. Call it before the blacklist is shared.
func (b *Blacklist) OnAdd(publish func([]store.BlacklistEntry)) { b.publish = publish }

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
	b.Learn(list...)
	return nil
}

// Add records entries this process has just committed to the store, and publishes
// them to the other replicas.
func (b *Blacklist) Add(es ...store.BlacklistEntry) {
	b.Learn(es...)
	if b.publish != nil && len(es) > 0 {
		b.publish(es)
	}
}

// Learn records entries committed to the store by another process, or read from it.
func (b *Blacklist) Learn(es ...store.BlacklistEntry) {
	if len(es) == 0 {
		return
	}
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
