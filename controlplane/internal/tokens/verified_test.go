package tokens_test

import (
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
)

type fixture struct {
	st     store.Store
	issuer *tokens.Issuer
	now    time.Time
	d      store.Daemon
	pub    []byte
	kid    string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aegis.db"))
	noErr(t, err)
	t.Cleanup(func() { _ = st.Close() })
	now := time.Now().UTC().Truncate(time.Second)
	sk, err := tokens.NewSigningKey(rand.Reader, now)
	noErr(t, err)
	noErr(t, st.InsertSigningKey(ctx, sk))
	issuer, err := tokens.LoadIssuer(ctx, st, time.Hour)
	noErr(t, err)
	pub := make([]byte, 32)
	_, _ = rand.Read(pub)
	return &fixture{st: st, issuer: issuer, now: now, pub: pub, kid: sk.KID,
		d: store.Daemon{NodeID: "n-000000000001", TenantID: "t1"}}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A token this process issued is verified from the cache, and its expiry is still
// checked on every call: at exp it is ErrExpired with its claims, as a parsed one is.
func TestCachedTokenExpires(t *testing.T) {
	f := newFixture(t)
	issued, err := f.issuer.Issue(f.d, f.pub, f.now)
	noErr(t, err)
	if n := f.issuer.VerifiedLen(); n != 1 {
		t.Fatalf("cache holds %d tokens after one Issue, want 1", n)
	}
	exp := issued.Claims.Expires()
	c, err := f.issuer.Verify(t.Context(), issued.Token, exp.Add(-time.Second))
	noErr(t, err)
	if c.JTI() != issued.Claims.JTI() || c.NodeID() != f.d.NodeID || c.TenantID != "t1" || c.Cnf.KeyFingerprint != issued.Record.KeyFingerprint {
		t.Fatalf("cached claims %+v, want the issued ones %+v", c, issued.Claims)
	}
	c, err = f.issuer.Verify(t.Context(), issued.Token, exp)
	if !errors.Is(err, nodetoken.ErrExpired) {
		t.Fatalf("at exp: err = %v, want ErrExpired", err)
	}
	if c.JTI() != issued.Claims.JTI() || !c.Expires().Equal(exp) {
		t.Fatalf("an expired token's claims are %+v, want the token's", c)
	}
	// A parser that never saw the token says the same.
	if _, err := f.issuer.KeySet().Verify(issued.Token, exp); !errors.Is(err, nodetoken.ErrExpired) {
		t.Fatalf("KeySet.Verify at exp: %v, want ErrExpired", err)
	}
}

// A token seen once by parsing is cached too, and verifies the same next time.
func TestParsedTokenIsCached(t *testing.T) {
	f := newFixture(t)
	other, err := tokens.LoadIssuer(t.Context(), f.st, time.Hour)
	noErr(t, err)
	issued, err := other.Issue(f.d, f.pub, f.now) // issued by "another replica"
	noErr(t, err)
	if n := f.issuer.VerifiedLen(); n != 0 {
		t.Fatalf("cache holds %d tokens, want 0", n)
	}
	for range 2 {
		c, err := f.issuer.Verify(t.Context(), issued.Token, f.now)
		noErr(t, err)
		if c.JTI() != issued.Claims.JTI() {
			t.Fatalf("jti %q, want %q", c.JTI(), issued.Claims.JTI())
		}
	}
	if n := f.issuer.VerifiedLen(); n != 1 {
		t.Fatalf("cache holds %d tokens, want 1", n)
	}
}

// A cached token whose signing key has left the store (purged after its tokens
// expired, or deleted by hand) no longer verifies.
func TestCachedTokenOfRemovedKey(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	issued, err := f.issuer.Issue(f.d, f.pub, f.now)
	noErr(t, err)
	if _, err := tokens.RotateSigningKey(ctx, f.st, rand.Reader, f.now, "test"); err != nil {
		t.Fatal(err)
	}
	deleted, err := f.st.DeleteSigningKeysRetiredBefore(ctx, f.now.Add(time.Second))
	noErr(t, err)
	if len(deleted) != 1 || deleted[0] != f.kid {
		t.Fatalf("deleted %v, want [%s]", deleted, f.kid)
	}
	_, err = f.issuer.Reload(ctx)
	noErr(t, err)
	_, err = f.issuer.Verify(ctx, issued.Token, f.now)
	if !errors.Is(err, nodetoken.ErrInvalid) || !errors.Is(err, nodetoken.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrInvalid wrapping ErrUnknownKey", err)
	}
}

// The cache answers only for the exact text: a token differing in one character is
// parsed, and its signature refused.
func TestCachedTokenTampered(t *testing.T) {
	f := newFixture(t)
	issued, err := f.issuer.Issue(f.d, f.pub, f.now)
	noErr(t, err)
	b := []byte(issued.Token)
	i := len(b) - 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	if _, err := f.issuer.Verify(t.Context(), string(b), f.now); !errors.Is(err, nodetoken.ErrInvalid) {
		t.Fatalf("tampered token: err = %v, want ErrInvalid", err)
	}
}

// The cache stays within its bound however many tokens are issued.
func TestVerifiedCacheBounded(t *testing.T) {
	f := newFixture(t)
	const bound = 16
	f.issuer.SetMaxVerified(bound)
	for range bound + 10 {
		_, err := f.issuer.Issue(f.d, f.pub, f.now)
		noErr(t, err)
	}
	if n := f.issuer.VerifiedLen(); n > bound || n == 0 {
		t.Fatalf("cache holds %d tokens, bound %d", n, bound)
	}
}
