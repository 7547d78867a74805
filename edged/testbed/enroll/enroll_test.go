package enroll_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/enrolltoken"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/enroll"
	"github.com/aegis-edge/aegis/edged/keystore"
)

func stateDir(t *testing.T) string { return filepath.Join(t.TempDir(), "edge") }

// assertNoState fails if dir holds anything at all (it may not exist).
func assertNoState(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		t.Fatalf("failed enrollment left %v in %s", names, dir)
	}
}

func TestEnrollWritesIdentity(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	dir := stateDir(t)
	res, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t, "web", "prod"), StateDir: dir, Name: "web-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.NodeID, "n-") || len(res.NodeID) != 14 {
		t.Fatalf("node id %q", res.NodeID)
	}
	if res.ServerURL != srv.URL {
		t.Fatalf("server url %q, want %q (from the token)", res.ServerURL, srv.URL)
	}
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %04o", st.Mode().Perm())
	}
	for _, f := range keystore.IdentityFiles {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", f, st.Mode().Perm())
		}
	}
	ks := keystore.Open(dir)
	if err := ks.CheckPermissions(); err != nil {
		t.Fatal(err)
	}
	id, err := ks.Load()
	if err != nil {
		t.Fatal(err)
	}
	if id.Node.NodeID != res.NodeID || id.Node.Name != "web-east-1" || id.Node.Tenant.ID == "" || id.Node.ServerURL != srv.URL {
		t.Fatalf("node.json %+v", id.Node)
	}
	if got := fingerprint.Of(id.Key.Public().(ed25519.PublicKey)); got != res.KeyFingerprint {
		t.Fatalf("key fingerprint %s, result says %s", got, res.KeyFingerprint)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, keystore.CAFile))
	if strings.TrimSpace(string(caPEM)) != strings.TrimSpace(string(srv.CAPEM)) {
		t.Fatal("ca.crt is not the control plane's CA")
	}
	if !res.TokenExpires.After(time.Now()) {
		t.Fatalf("token expires %s", res.TokenExpires)
	}

	hosts, err := srv.AdminClient().ListHosts(context.Background(), connect.NewRequest(&edgev1.ListHostsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var found *edgev1.Host
	for _, h := range hosts.Msg.GetHosts() {
		if h.GetNodeId() == res.NodeID {
			found = h
		}
	}
	if found == nil || found.GetKeyFingerprint() != res.KeyFingerprint || found.GetName() != "web-east-1" {
		t.Fatalf("host not listed as enrolled: %v", hosts.Msg.GetHosts())
	}

	// A second enrollment into the same dir is refused and changes nothing.
	before, _ := os.ReadFile(filepath.Join(dir, keystore.KeyFile))
	_, err = enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), StateDir: dir})
	if !errors.Is(err, enroll.ErrAlreadyEnrolled) || !strings.Contains(err.Error(), "already enrolled as "+res.NodeID) ||
		!strings.Contains(err.Error(), "aegis edge logout") {
		t.Fatalf("second enroll: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, keystore.KeyFile))
	if string(before) != string(after) {
		t.Fatal("refused enrollment changed node.key")
	}
}

func TestEnrollReusedToken(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	tok := srv.EnrollmentToken(t)
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: tok, StateDir: stateDir(t)}); err != nil {
		t.Fatal(err)
	}
	dir := stateDir(t)
	_, err := enroll.Enroll(context.Background(), enroll.Options{Token: tok, StateDir: dir})
	if !errors.Is(err, enroll.ErrTokenUsed) || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reused token: %v", err)
	}
	if strings.Contains(err.Error(), mustParse(t, tok).Secret) {
		t.Fatal("error echoes the enrollment secret")
	}
	assertNoState(t, dir)
}

func TestEnrollExpiredToken(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	srv := cptest.Start(t, cptest.Options{Now: func() time.Time { return time.Unix(0, now.Load()) }})
	tok := srv.EnrollmentToken(t)
	now.Add(int64(time.Hour))
	dir := stateDir(t)
	_, err := enroll.Enroll(context.Background(), enroll.Options{Token: tok, StateDir: dir})
	if !errors.Is(err, enroll.ErrTokenExpired) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	assertNoState(t, dir)
}

func mustParse(t *testing.T, s string) enrolltoken.Token {
	t.Helper()
	tok, err := enrolltoken.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestEnrollTamperedCAHash(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	tok := mustParse(t, srv.EnrollmentToken(t))
	tok.CAHash[0] ^= 0xff
	dir := stateDir(t)
	_, err := enroll.Enroll(context.Background(), enroll.Options{Token: tok.String(), StateDir: dir})
	if !errors.Is(err, enroll.ErrCAMismatch) ||
		!strings.Contains(err.Error(), "the server's certificate does not match the CA fingerprint in the token: check --server / ask for a new token") {
		t.Fatalf("tampered CA hash: %v", err)
	}
	assertNoState(t, dir)
}

func TestEnrollWrongServer(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	other := cptest.Start(t, cptest.Options{})
	dir := stateDir(t)
	// The token pins srv's CA; --server points at a control plane with another CA.
	_, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), ServerURL: other.URL, StateDir: dir})
	if !errors.Is(err, enroll.ErrCAMismatch) {
		t.Fatalf("wrong server CA: %v", err)
	}
	assertNoState(t, dir)
}

func TestEnrollUnreachable(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	tok := srv.EnrollmentToken(t)
	srv.Stop()
	dir := stateDir(t)
	_, err := enroll.Enroll(context.Background(), enroll.Options{Token: tok, StateDir: dir, Timeout: 3 * time.Second})
	if !errors.Is(err, enroll.ErrUnreachable) || !strings.Contains(err.Error(), "cannot reach the control plane at "+srv.URL) {
		t.Fatalf("unreachable: %v", err)
	}
	assertNoState(t, dir)
}

func TestEnrollMalformedToken(t *testing.T) {
	dir := stateDir(t)
	_, err := enroll.Enroll(context.Background(), enroll.Options{Token: "abc.def", StateDir: dir, ServerURL: "https://127.0.0.1:1"})
	if !errors.Is(err, enroll.ErrBadToken) {
		t.Fatalf("malformed: %v", err)
	}
	assertNoState(t, dir)
}

func TestEnrollIntoExistingDirLeavesItEmptyOnFailure(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	tok := srv.EnrollmentToken(t)
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: tok, StateDir: stateDir(t)}); err != nil {
		t.Fatal(err)
	}
	dir := stateDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: tok, StateDir: dir}); err == nil {
		t.Fatal("reused token accepted")
	}
	for _, f := range append(keystore.IdentityFiles, keystore.RevokedFile) {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Fatalf("%s left behind", f)
		}
	}
}
