package rotation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/golang-jwt/jwt/v5"
)

// These tests need no control plane: they cover what the files alone decide.

var signer = func() nodetoken.Signer {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	return nodetoken.Signer{KID: "test", Key: k}
}()

func tokenFor(t *testing.T, key ed25519.PrivateKey) string {
	t.Helper()
	tok, _, err := signer.Issue(nodetoken.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: "n-000000000001"},
		TenantID:         "t-00000001",
		Cnf:              nodetoken.Confirmation{KeyFingerprint: FingerprintOf(key)},
	}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// stateDir is an enrolled state dir (no server behind it).
func stateDir(t *testing.T) (*keystore.Dir, ed25519.PrivateKey) {
	t.Helper()
	d := keystore.Open(filepath.Join(t.TempDir(), "edge"))
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	must(t, d.WriteKey(keystore.KeyFile, key))
	must(t, d.WriteToken(tokenFor(t, key)))
	must(t, d.WriteNode(keystore.Node{NodeID: "n-000000000001", ServerURL: "https://127.0.0.1:1"}))
	return d, key
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

func offlineHost(d *keystore.Dir, clk *clock) *Host {
	return New(Config{Dir: d, Now: clk.Now})
}

func rec(id string, keep time.Duration, old, next ed25519.PrivateKey) record {
	return record{RotationID: id, NodeID: "n-000000000001", TimestampUnixMs: time.Now().UnixMilli(), KeepOld: keep.String(), OldKey: FingerprintOf(old), NewKey: FingerprintOf(next)}
}

func noLeftovers(t *testing.T, d *keystore.Dir) {
	t.Helper()
	if p, err := Pending(d); err != nil || p {
		t.Fatalf("pending after reconcile: %v %v", p, err)
	}
	entries, _ := os.ReadDir(d.Path())
	for _, e := range entries {
		if len(e.Name()) > 5 && e.Name()[:5] == ".tmp-" {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
}

// S1 half done (no rotation.json): the request was never sent, so the next key is
// dropped without asking anyone, and so is a temp file a crash left.
func TestReconcileDropsAnUnsentKey(t *testing.T) {
	d, old := stateDir(t)
	must(t, d.WriteKey(keystore.KeyNextFile, newKey(t)))
	must(t, os.WriteFile(d.File(".tmp-node.key-123"), []byte("secret"), 0o600))
	rc, err := offlineHost(d, &clock{time.Now()}).Reconcile(context.Background())
	if err != nil || !rc.Discarded {
		t.Fatalf("reconcile: %+v %v", rc, err)
	}
	noLeftovers(t, d)
	if k, _ := d.ReadKey(); !k.Equal(old) {
		t.Fatal("node.key changed")
	}
}

// A crash after S3 or S4 (node.token.next bound to node.key.next) proves the server
// committed: the swap is finished offline, archiving the old key exactly once.
func TestReconcileFinishesACommittedRotationOffline(t *testing.T) {
	for _, crashAfterArchive := range []bool{false, true} {
		d, old := stateDir(t)
		next := newKey(t)
		clk := &clock{time.Date(2026, 4, 28, 14, 32, 11, 0, time.UTC)}
		h := offlineHost(d, clk)
		r := rec("11111111-1111-4111-8111-111111111111", 2*time.Hour, old, next)
		must(t, d.WriteKey(keystore.KeyNextFile, next))
		must(t, h.writeRecord(d.Batch(), r))
		tok := tokenFor(t, next)
		must(t, d.WriteFile(keystore.TokenNextFile, []byte(tok+"\n")))
		if crashAfterArchive {
			b := d.Batch()
			if _, _, err := h.archive(b, old, r); err != nil {
				t.Fatal(err)
			}
			if err := b.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		clk.t = clk.t.Add(3 * time.Second) // a later restart must not archive again
		var changed []Identity
		h.cfg.OnChange = func(id Identity) { changed = append(changed, id) }
		rc, err := h.Reconcile(context.Background())
		if err != nil || rc.Finished == nil {
			t.Fatalf("reconcile: %+v %v", rc, err)
		}
		noLeftovers(t, d)
		if k, _ := d.ReadKey(); !k.Equal(next) {
			t.Fatal("node.key is not the new key")
		}
		if got, _ := d.ReadToken(); got != tok {
			t.Fatal("node.token is not the new token")
		}
		if len(changed) != 1 || !changed[0].Key.Equal(next) {
			t.Fatalf("OnChange calls: %d", len(changed))
		}
		arch, err := h.Archive()
		if err != nil || len(arch) != 1 {
			t.Fatalf("archive %+v %v", arch, err)
		}
		if filepath.Base(arch[0].File) != "2026-04-28T14:32:11Z.key" && crashAfterArchive {
			t.Fatalf("archive name %s", arch[0].File)
		}
		if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\.key$`).MatchString(filepath.Base(arch[0].File)) {
			t.Fatalf("archive name %s", arch[0].File)
		}
		if arch[0].DeleteAfter.Sub(arch[0].ArchivedAt) != 2*time.Hour {
			t.Fatalf("retention %+v", arch[0])
		}
		raw, _ := os.ReadFile(arch[0].File)
		if k, err := keystore.DecodeKey(raw); err != nil || !k.Equal(old) {
			t.Fatal("the archive does not hold the old key")
		}
		if fi, _ := os.Stat(arch[0].File); fi.Mode().Perm() != 0o600 {
			t.Fatalf("archive mode %04o", fi.Mode().Perm())
		}
	}
}

// A crash after S5 (the key swapped, the token not yet): the token is moved in only
// if it is bound to node.key.
func TestReconcileMovesTheTokenIn(t *testing.T) {
	d, key := stateDir(t)
	tok := tokenFor(t, key)
	must(t, d.WriteFile(keystore.TokenNextFile, []byte(tok+"\n")))
	must(t, d.WriteFile(keystore.RotationFile, []byte(`{"rotation_id":"x","timestamp_unix_ms":1}`)))
	rc, err := offlineHost(d, &clock{time.Now()}).Reconcile(context.Background())
	if err != nil || !rc.TokenSwapped {
		t.Fatalf("reconcile: %+v %v", rc, err)
	}
	noLeftovers(t, d)
	if got, _ := d.ReadToken(); got != tok {
		t.Fatal("token not moved in")
	}

	// A token for some other key is dropped, never installed.
	tok0, _ := d.ReadToken()
	must(t, d.WriteFile(keystore.TokenNextFile, []byte(tokenFor(t, newKey(t))+"\n")))
	if rc, err := offlineHost(d, &clock{time.Now()}).Reconcile(context.Background()); err != nil || rc.TokenSwapped {
		t.Fatalf("reconcile: %+v %v", rc, err)
	}
	noLeftovers(t, d)
	if got, _ := d.ReadToken(); got != tok0 {
		t.Fatal("a token for another key was installed")
	}
}

// Two archives in the same second get distinct names; a redo of the same rotation
// rewrites its own file.
func TestArchiveNames(t *testing.T) {
	d, old := stateDir(t)
	clk := &clock{time.Date(2026, 4, 28, 14, 32, 11, 500, time.UTC)}
	h := offlineHost(d, clk)
	b := d.Batch()
	p1, _, err := h.archive(b, old, rec("a", time.Hour, old, old))
	must(t, err)
	p1again, _, err := h.archive(b, old, rec("a", time.Hour, old, old))
	must(t, err)
	p2, _, err := h.archive(b, newKey(t), rec("b", time.Hour, old, old))
	must(t, err)
	must(t, b.Sync())
	if filepath.Base(p1) != "2026-04-28T14:32:11Z.key" || p1again != p1 || p2 == p1 {
		t.Fatalf("names %s %s %s", p1, p1again, p2)
	}
	if fi, _ := os.Stat(filepath.Dir(p1)); fi.Mode().Perm() != 0o700 {
		t.Fatalf("archive dir mode %04o", fi.Mode().Perm())
	}
}

// Housekeeping deletes an archived key once its own retention has passed and keeps
// a young one; a key without a record gets the default 24h from its name.
func TestHousekeep(t *testing.T) {
	d, old := stateDir(t)
	t0 := time.Date(2026, 4, 28, 14, 0, 0, 0, time.UTC)
	clk := &clock{t0}
	h := offlineHost(d, clk)
	short, _, err := h.archive(d.Batch(), old, rec("short", time.Hour, old, old))
	must(t, err)
	clk.t = t0.Add(time.Second)
	long, _, err := h.archive(d.Batch(), newKey(t), rec("long", 48*time.Hour, old, old))
	must(t, err)
	adir := keystore.Open(d.File(keystore.ArchiveDir))
	must(t, adir.WriteKey("2026-04-28T13:00:00Z.key", newKey(t))) // put there by hand

	clk.t = t0.Add(59 * time.Minute)
	gone, err := h.Housekeep(context.Background())
	if err != nil || len(gone) != 0 {
		t.Fatalf("at 59m: deleted %v %v", gone, err)
	}
	clk.t = t0.Add(61 * time.Minute)
	gone, err = h.Housekeep(context.Background())
	if err != nil || len(gone) != 1 || gone[0] != short {
		t.Fatalf("at 61m: deleted %v %v", gone, err)
	}
	// The hand-placed key was archived at 13:00: 24h later is t0+23h.
	clk.t = t0.Add(22*time.Hour + 59*time.Minute)
	if gone, _ = h.Housekeep(context.Background()); len(gone) != 0 {
		t.Fatalf("at 22h59m: deleted %v", gone)
	}
	clk.t = t0.Add(23 * time.Hour)
	if gone, _ = h.Housekeep(context.Background()); len(gone) != 1 || filepath.Base(gone[0]) != "2026-04-28T13:00:00Z.key" {
		t.Fatalf("at 23h: deleted %v", gone)
	}
	if _, err := os.Stat(long); err != nil {
		t.Fatalf("the 48h key is gone: %v", err)
	}
	clk.t = t0.Add(49 * time.Hour)
	if gone, _ = h.Housekeep(context.Background()); len(gone) != 1 || gone[0] != long {
		t.Fatalf("at 49h: deleted %v", gone)
	}
	if _, err := os.Stat(d.File(keystore.ArchiveIndexFile)); !os.IsNotExist(err) {
		t.Fatal("archive.json kept with nothing archived")
	}
}

// Logout works offline: the server cannot be told, the state is removed anyway.
func TestLogoutOffline(t *testing.T) {
	d, old := stateDir(t)
	h := New(Config{Dir: d, Client: DialHTTP(&http.Client{}, "https://127.0.0.1:1"), LogoutTimeout: 2 * time.Second})
	_, _, err := h.archive(d.Batch(), old, rec("a", time.Hour, old, old))
	must(t, err)
	must(t, d.WriteKey(keystore.KeyNextFile, newKey(t)))
	res, err := h.Logout(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ServerNotified || res.NodeID != "n-000000000001" || res.Error == "" {
		t.Fatalf("result %+v", res)
	}
	entries, _ := os.ReadDir(d.Path())
	for _, e := range entries {
		if e.Name() != keystore.LockFile {
			t.Errorf("left after logout: %s", e.Name())
		}
	}
	if _, err := h.Logout(context.Background()); err == nil {
		t.Fatal("a second logout succeeded")
	}
}
