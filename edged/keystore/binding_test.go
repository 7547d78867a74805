package keystore

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/golang-jwt/jwt/v5"
)

func genKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func tokenFor(t *testing.T, key ed25519.PrivateKey) string {
	t.Helper()
	signer := nodetoken.Signer{KID: "k1", Key: genKey(t)}
	tok, _, err := signer.Issue(nodetoken.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: "n-0123456789ab"}, TenantID: "t-1",
		Cnf: nodetoken.Confirmation{KeyFingerprint: fingerprint.Of(key.Public().(ed25519.PublicKey))},
	}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// The guide's anti-pattern, tried as a host owner would: a different valid Ed25519 key
// written over node.key. It is caught before any connection, with what to do, and the
// check changes nothing on disk.
func TestCheckKeyBindingCatchesAHandEditedKey(t *testing.T) {
	d := newDir(t)
	right, other := genKey(t), genKey(t)
	tok := tokenFor(t, right)
	if err := d.CheckKeyBinding(right, tok); err != nil {
		t.Fatalf("matching key refused: %v", err)
	}

	err := d.CheckKeyBinding(other, tok)
	var mm *KeyMismatchError
	if !errors.As(err, &mm) || !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("got %v, want a KeyMismatchError", err)
	}
	if mm.Archived != "" || !strings.Contains(err.Error(), "aegis edge logout") ||
		!strings.Contains(err.Error(), fingerprint.Of(other.Public().(ed25519.PublicKey))) {
		t.Fatalf("message %q", err)
	}

	// The right key sits in the archive (next to an unrelated one): it is named.
	arch, err := d.Sub(ArchiveDir)
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]ed25519.PrivateKey{"2026-04-28T14:32:11Z.key": right, "2026-05-01T00:00:00Z.key": genKey(t)} {
		raw, err := EncodeKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := arch.WriteFile(name, raw); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshotDir(t, d.Path())
	err = d.CheckKeyBinding(other, tok)
	if !errors.As(err, &mm) || mm.Archived != "2026-04-28T14:32:11Z.key" ||
		!strings.Contains(err.Error(), filepath.Join(d.Path(), ArchiveDir, "2026-04-28T14:32:11Z.key")) {
		t.Fatalf("got %v, want the archived key named", err)
	}
	if after := snapshotDir(t, d.Path()); after != before {
		t.Fatalf("the check changed the state dir:\n%s\n--\n%s", before, after)
	}
	// No secret in the message: fingerprints only.
	raw, _ := EncodeKey(other)
	if strings.Contains(err.Error(), string(raw)) || strings.Contains(err.Error(), tok) {
		t.Fatal("the message carries a secret")
	}

	// Mid-rotation the two legitimately disagree: reconcile's job, not this check's.
	if err := d.WriteFile(RotationFile, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckKeyBinding(other, tok); err != nil {
		t.Fatalf("judged a rotation in progress: %v", err)
	}
}

func snapshotDir(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(p + " " + fi.Mode().String() + " " + fi.ModTime().String() + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
