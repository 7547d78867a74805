package keystore

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newDir(t *testing.T) *Dir {
	t.Helper()
	d := Open(filepath.Join(t.TempDir(), "edge"))
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	return d
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestCreateMakes0700(t *testing.T) {
	d := newDir(t)
	if m := mode(t, d.Path()); m != 0o700 {
		t.Fatalf("dir mode %04o, want 0700", m)
	}
}

func TestResolveDir(t *testing.T) {
	t.Setenv(EnvStateDir, "/from/env")
	if got, _ := ResolveDir("/from/flag"); got != "/from/flag" {
		t.Errorf("flag: got %q", got)
	}
	if got, _ := ResolveDir(""); got != "/from/env" {
		t.Errorf("env: got %q", got)
	}
	t.Setenv(EnvStateDir, "")
	t.Setenv("HOME", "/home/someone")
	if got, _ := ResolveDir(""); got != "/home/someone/.aegis/edge" {
		t.Errorf("default: got %q", got)
	}
}

func writeKey(t *testing.T, d *Dir) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteKey(KeyFile, key); err != nil {
		t.Fatal(err)
	}
	return key
}

func TestCheckPermissionsAcceptsTightModes(t *testing.T) {
	d := newDir(t)
	writeKey(t, d)
	if err := d.WriteToken("tok"); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, d.File(KeyFile)); m != 0o600 {
		t.Fatalf("key mode %04o", m)
	}
	if err := d.CheckPermissions(); err != nil {
		t.Fatalf("0700 dir, 0600 files refused: %v", err)
	}
}

func TestCheckPermissionsRefusesLooseKey(t *testing.T) {
	for _, tc := range []struct {
		file string
		mode os.FileMode
	}{
		{KeyFile, 0o644}, {KeyFile, 0o640}, {KeyFile, 0o602}, {TokenFile, 0o644}, {TokenFile, 0o660},
	} {
		d := newDir(t)
		writeKey(t, d)
		if err := d.WriteToken("tok"); err != nil {
			t.Fatal(err)
		}
		p := d.File(tc.file)
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		err := d.CheckPermissions()
		if !errors.Is(err, ErrInsecure) {
			t.Fatalf("%s %04o: got %v, want ErrInsecure", tc.file, tc.mode, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "chmod 600 "+p) || !strings.Contains(msg, p) {
			t.Errorf("message does not name the file and the fix: %q", msg)
		}
		if !strings.Contains(msg, "mode 0"+octal(tc.mode)) {
			t.Errorf("message does not give the mode %04o: %q", tc.mode, msg)
		}
	}
}

func octal(m os.FileMode) string {
	const digits = "01234567"
	p := uint32(m.Perm())
	return string([]byte{digits[(p>>6)&7], digits[(p>>3)&7], digits[p&7]})
}

func TestCheckPermissionsRefusesOpenDir(t *testing.T) {
	d := newDir(t)
	if err := os.Chmod(d.Path(), 0o755); err != nil {
		t.Fatal(err)
	}
	err := d.CheckPermissions()
	if !errors.Is(err, ErrInsecure) || !strings.Contains(err.Error(), "chmod 700 "+d.Path()) {
		t.Fatalf("got %v", err)
	}
}

func TestCheckPermissionsRefusesSymlinkedKey(t *testing.T) {
	d := newDir(t)
	other := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, d.File(KeyFile)); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckPermissions(); err == nil {
		t.Fatal("symlinked node.key accepted")
	}
}

func TestAtomicWriteLeavesNoTempFiles(t *testing.T) {
	d := newDir(t)
	for i := 0; i < 5; i++ {
		if err := d.WriteToken("token-" + string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
	}
	writeKey(t, d)
	entries, err := os.ReadDir(d.Path())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "node.key,node.token" {
		t.Fatalf("dir holds %v, want only node.key and node.token", names)
	}
	tok, err := d.ReadToken()
	if err != nil || tok != "token-e" {
		t.Fatalf("token %q, %v", tok, err)
	}
	if m := mode(t, d.File(TokenFile)); m != 0o600 {
		t.Fatalf("token mode %04o", m)
	}
}

func TestAtomicWriteFailureLeavesNoTemp(t *testing.T) {
	d := newDir(t)
	// A directory where the target should be makes the rename fail.
	if err := os.Mkdir(d.File(TokenFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.File(TokenFile)+"/x", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteToken("t"); err == nil {
		t.Fatal("write over a non-empty directory succeeded")
	}
	entries, _ := os.ReadDir(d.Path())
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			t.Fatalf("temp file left behind: %s", e.Name())
		}
	}
}

func TestKeyRoundTripPKCS8(t *testing.T) {
	d := newDir(t)
	key := writeKey(t, d)
	raw, _ := os.ReadFile(d.File(KeyFile))
	if !strings.HasPrefix(string(raw), "-----BEGIN PRIVATE KEY-----") {
		t.Fatalf("not PKCS#8 PEM: %q", raw[:30])
	}
	got, err := d.ReadKey()
	if err != nil || !got.Equal(key) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := DecodeKey([]byte("garbage")); err == nil {
		t.Fatal("garbage decoded")
	}
}

func TestDaemonLockExcludesSecondDaemon(t *testing.T) {
	d := newDir(t)
	l1, err := d.LockDaemon()
	if err != nil {
		t.Fatal(err)
	}
	running, err := d.DaemonRunning()
	if err != nil || !running {
		t.Fatalf("DaemonRunning = %v, %v while locked", running, err)
	}
	// flock locks belong to the open file description, so a second open in this
	// process is excluded exactly like another process would be.
	_, err = d.LockDaemon()
	if !errors.Is(err, ErrDaemonRunning) || !strings.Contains(err.Error(), "another edged is running on "+d.Path()) {
		t.Fatalf("second daemon: %v", err)
	}
	if err := l1.Release(); err != nil {
		t.Fatal(err)
	}
	if running, _ := d.DaemonRunning(); running {
		t.Fatal("DaemonRunning after release")
	}
	l2, err := d.LockDaemon()
	if err != nil {
		t.Fatalf("relock after release: %v", err)
	}
	l2.Release()
}

func TestMutationLockSerializes(t *testing.T) {
	d := newDir(t)
	unlock, err := d.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := d.Lock(ctx); err == nil {
		t.Fatal("second Lock succeeded while held")
	}
	done := make(chan func())
	go func() {
		u, err := d.Lock(context.Background())
		if err != nil {
			t.Error(err)
		}
		done <- u
	}()
	select {
	case <-done:
		t.Fatal("lock acquired while held")
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	select {
	case u := <-done:
		u()
	case <-time.After(2 * time.Second):
		t.Fatal("waiter never got the lock")
	}
}

func TestLoadAndRemoveIdentity(t *testing.T) {
	d := newDir(t)
	if _, err := d.Load(); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("empty dir: %v", err)
	}
	writeKey(t, d)
	if err := d.WriteToken("tok"); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteFile(CAFile, []byte("not a cert")); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteNode(Node{NodeID: "n-000000000001", ServerURL: "https://x", EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Load(); err == nil || !strings.Contains(err.Error(), "CERTIFICATE") {
		t.Fatalf("bad ca accepted: %v", err)
	}
	if err := d.RemoveIdentity(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := d.Enrolled(); ok {
		t.Fatal("still enrolled")
	}
	entries, _ := os.ReadDir(d.Path())
	if len(entries) != 0 {
		t.Fatalf("left %v", entries)
	}
}

// On a packaged host: systemd's $STATE_DIRECTORY for the daemon, the system directory
// for aegisctl; an explicit flag or $AEGIS_EDGE_STATE_DIR still wins.
func TestResolveDirPackagedHost(t *testing.T) {
	sys := filepath.Join(t.TempDir(), "aegis-edge")
	env := map[string]string{"HOME": "/home/someone"}
	getenv := func(k string) string { return env[k] }
	t.Setenv("HOME", "/home/someone")
	if got, _ := resolveDir("", getenv, sys); got != "/home/someone/.aegis/edge" {
		t.Errorf("no system dir yet: got %q", got)
	}
	if err := os.Mkdir(sys, 0o700); err != nil {
		t.Fatal(err)
	}
	if got, _ := resolveDir("", getenv, sys); got != sys {
		t.Errorf("system dir present: got %q, want %q", got, sys)
	}
	env["STATE_DIRECTORY"] = "/var/lib/from-systemd:/var/lib/other"
	if got, _ := resolveDir("", getenv, sys); got != "/var/lib/from-systemd" {
		t.Errorf("$STATE_DIRECTORY: got %q", got)
	}
	env[EnvStateDir] = "/from/env"
	if got, _ := resolveDir("", getenv, sys); got != "/from/env" {
		t.Errorf("%s over $STATE_DIRECTORY: got %q", EnvStateDir, got)
	}
	if got, _ := resolveDir("/from/flag", getenv, sys); got != "/from/flag" {
		t.Errorf("flag: got %q", got)
	}
}
