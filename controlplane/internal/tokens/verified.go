package tokens

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/api/nodetoken"
)

// maxVerified bounds the verified-token cache: one token per daemon of a large
// fleet, plus the ones a refresh or rotation has just replaced. An entry is a hash
// and the claims, a few hundred bytes.
const maxVerified = 16384

// verifiedCache remembers the claims of tokens whose signature this process has
// established: tokens it signed itself (Issue) and tokens it parsed and verified.
// It is keyed by SHA-256 of the exact token text, so only that text is answered
// from it. It saves the parse and the Ed25519 verification, nothing else: expiry,
// and the signing key still being loaded, are checked on every hit, and everything
// that can withdraw a genuine token (the blacklist, the node's revocation, its key)
// is the caller's check, made on every request whatever the cache holds.
type verifiedCache struct {
	mu  sync.RWMutex
	m   map[[sha256.Size]byte]verifiedToken
	max int
}

type verifiedToken struct {
	kid    string
	claims nodetoken.Claims
}

func newVerifiedCache() *verifiedCache {
	return &verifiedCache{m: map[[sha256.Size]byte]verifiedToken{}, max: maxVerified}
}

func tokenKey(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

func (vc *verifiedCache) get(k [sha256.Size]byte) (verifiedToken, bool) {
	vc.mu.RLock()
	defer vc.mu.RUnlock()
	v, ok := vc.m[k]
	return v, ok
}

// put remembers a verified token; when full, an arbitrary entry makes room (map
// iteration starts anywhere), which costs a token one more parse at worst.
func (vc *verifiedCache) put(k [sha256.Size]byte, v verifiedToken) {
	vc.mu.Lock()
	defer vc.mu.Unlock()
	if _, ok := vc.m[k]; !ok && len(vc.m) >= vc.max {
		for old := range vc.m {
			delete(vc.m, old)
			break
		}
	}
	vc.m[k] = v
}

func (vc *verifiedCache) drop(k [sha256.Size]byte) {
	vc.mu.Lock()
	defer vc.mu.Unlock()
	delete(vc.m, k)
}

// purge forgets the tokens that expired before now.
func (vc *verifiedCache) purge(now time.Time) {
	vc.mu.Lock()
	defer vc.mu.Unlock()
	for k, v := range vc.m {
		if !now.Before(v.claims.Expires()) {
			delete(vc.m, k)
		}
	}
}

func (vc *verifiedCache) len() int {
	vc.mu.RLock()
	defer vc.mu.RUnlock()
	return len(vc.m)
}
