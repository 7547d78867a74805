package nodetoken

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func newSigner(t *testing.T, kid string) (Signer, ed25519.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return Signer{KID: kid, Key: priv}, pub
}

var base = Claims{TenantID: "t-1", Cnf: Confirmation{KeyFingerprint: "SHA256:abc"}, RegisteredClaims: jwt.RegisteredClaims{Subject: "n-1"}}

func TestIssueVerify(t *testing.T) {
	s, pub := newSigner(t, "k1")
	ks := NewKeySet()
	ks.Add("k1", pub)
	now := time.Unix(1_800_000_000, 0)
	tok, issued, err := s.Issue(base, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ks.Verify(tok, now.Add(59*time.Minute))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.NodeID() != "n-1" || c.TenantID != "t-1" || c.JTI() != issued.JTI() || c.Cnf.KeyFingerprint != "SHA256:abc" {
		t.Fatalf("claims lost: %+v", c)
	}
	if _, err := ks.Verify(tok, now.Add(61*time.Minute)); !errors.Is(err, ErrExpired) {
		t.Fatalf("after exp: %v, want ErrExpired", err)
	}
	_, again, _ := s.Issue(base, now, time.Hour)
	if again.JTI() == issued.JTI() {
		t.Fatal("two tokens share a jti")
	}
}

func TestForgeriesRefused(t *testing.T) {
	s, pub := newSigner(t, "k1")
	evil, _ := newSigner(t, "k1") // attacker's key claiming the same kid
	ks := NewKeySet()
	ks.Add("k1", pub)
	now := time.Unix(1_800_000_000, 0)
	good, _, _ := s.Issue(base, now, time.Hour)
	forged, _, _ := evil.Issue(base, now, time.Hour)
	parts := strings.Split(good, ".")
	// Swap in claims for another node while keeping the original signature.
	otherClaims := base
	otherClaims.Subject = "n-2"
	other, _, _ := s.Issue(otherClaims, now, time.Hour)
	spliced := parts[0] + "." + strings.Split(other, ".")[1] + "." + parts[2]
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	expiredForged, _, _ := evil.Issue(base, now.Add(-2*time.Hour), time.Hour)
	for name, tok := range map[string]string{
		"other key same kid":  forged,
		"spliced claims":      spliced,
		"alg none":            none,
		"garbage":             "not-a-token",
		"empty":               "",
		"expired and forged":  expiredForged,
		"unknown kid":         mustIssue(t, "k9", now),
		"truncated signature": good[:len(good)-4],
	} {
		if _, err := ks.Verify(tok, now); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Verify = %v, want ErrInvalid", name, err)
		}
	}
}

func mustIssue(t *testing.T, kid string, now time.Time) string {
	s, _ := newSigner(t, kid)
	tok, _, err := s.Issue(base, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A signing-key rotation keeps old tokens valid while the old key stays in the set.
func TestKeyRotationKeepsOldTokens(t *testing.T) {
	s1, pub1 := newSigner(t, "k1")
	s2, pub2 := newSigner(t, "k2")
	ks := NewKeySet()
	ks.Add("k1", pub1)
	ks.Add("k2", pub2)
	now := time.Unix(1_800_000_000, 0)
	t1, _, _ := s1.Issue(base, now, time.Hour)
	t2, _, _ := s2.Issue(base, now, time.Hour)
	for _, tok := range []string{t1, t2} {
		if _, err := ks.Verify(tok, now); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	ks.Remove("k1")
	if _, err := ks.Verify(t1, now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("token of removed key: %v", err)
	}
}

func TestPeekDoesNotVerify(t *testing.T) {
	evil, _ := newSigner(t, "x")
	now := time.Unix(1_800_000_000, 0)
	tok, _, _ := evil.Issue(base, now, time.Hour)
	c, err := Peek(tok)
	if err != nil || !c.Expires().Equal(now.Add(time.Hour)) {
		t.Fatalf("Peek = %+v, %v", c, err)
	}
}

func FuzzVerify(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	ks := NewKeySet()
	ks.Add("k1", pub)
	now := time.Unix(1_800_000_000, 0)
	good, _, _ := Signer{KID: "k1", Key: priv}.Issue(base, now, time.Hour)
	f.Add(good)
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := ks.Verify(tok, now)
		if err == nil && tok != good {
			// Only the issued token (or a re-encoding jwt accepts of the same signed
			// bytes) may verify; it must carry the same claims.
			if c.NodeID() != "n-1" || c.TenantID != "t-1" {
				t.Fatalf("forged token verified: %q", tok)
			}
		}
	})
}

// A kid the set does not hold is told apart from a bad signature, so a verifier can
// reload its keys once for it; either way the token is invalid.
func TestUnknownKeyIsInvalid(t *testing.T) {
	s, pub := newSigner(t, "k1")
	other, _ := newSigner(t, "k2")
	evil, _ := newSigner(t, "k1")
	ks := NewKeySet()
	ks.Add("k1", pub)
	now := time.Unix(1_800_000_000, 0)
	unknown, _, _ := other.Issue(base, now, time.Hour)
	_, err := ks.Verify(unknown, now)
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown kid: %v, want ErrInvalid and ErrUnknownKey", err)
	}
	forged, _, _ := evil.Issue(base, now, time.Hour)
	if _, err := ks.Verify(forged, now); !errors.Is(err, ErrInvalid) || errors.Is(err, ErrUnknownKey) {
		t.Fatalf("known kid, wrong key: %v, want ErrInvalid only", err)
	}
	if got := ks.KIDs(); len(got) != 1 || got[0] != "k1" {
		t.Fatalf("KIDs = %v", got)
	}
	ks.Remove("k1")
	good, _, _ := s.Issue(base, now, time.Hour)
	if _, err := ks.Verify(good, now); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("removed kid: %v, want ErrUnknownKey", err)
	}
}
