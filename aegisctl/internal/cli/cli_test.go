package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// These in-process tests pin the CLI's own behaviour (profile file, output shapes,
// error lines) against a real TLS HTTP/2 server with a stand-in admin service; the
// scripts in testdata/script run the real binaries end to end.

const goodToken = "0123456789abcdef.0123456789abcdef0123456789abcdef"

type fakeAdmin struct {
	edgev1connect.UnimplementedEdgeAdminServiceHandler
}

func (f *fakeAdmin) auth(h http.Header) error {
	if h.Get("Authorization") != "Bearer "+goodToken {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("bad token"))
	}
	return nil
}

func (f *fakeAdmin) WhoAmI(_ context.Context, req *connect.Request[edgev1.WhoAmIRequest]) (*connect.Response[edgev1.WhoAmIResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&edgev1.WhoAmIResponse{
		TokenId: "0123456789abcdef",
		Role:    "operator",
		Tenant:  &edgev1.Tenant{Id: "t-0a1b2c3d", Name: "default", Kind: "team"},
	}), nil
}

func (f *fakeAdmin) ListHosts(_ context.Context, req *connect.Request[edgev1.ListHostsRequest]) (*connect.Response[edgev1.ListHostsResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	seen := time.Date(2026, 4, 28, 14, 32, 11, 500_000_000, time.FixedZone("x", 3600))
	return connect.NewResponse(&edgev1.ListHostsResponse{Hosts: []*edgev1.Host{
		{
			NodeId: "n-0123456789ab", Name: "web-1", Tenant: &edgev1.Tenant{Id: "t-0a1b2c3d", Kind: "team"},
			Status: edgev1.HostStatus_HOST_STATUS_CONNECTED, Tags: []string{"prod", "web"},
			KeyFingerprint: "SHA256:abc", LastSeenAt: timestamppb.New(seen),
		},
		{
			NodeId: "n-ba9876543210", Name: "db-1", Tenant: &edgev1.Tenant{Id: "t-0a1b2c3d", Kind: "team"},
			Status: edgev1.HostStatus_HOST_STATUS_REVOKED, KeyFingerprint: "SHA256:def",
		},
	}}), nil
}

func (f *fakeAdmin) GetHost(_ context.Context, req *connect.Request[edgev1.GetHostRequest]) (*connect.Response[edgev1.GetHostResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("no such host"))
}

type fixture struct {
	url    string
	caFile string
	home   string
	// sys stands for the packaged host's /var/lib/aegis-edge (absent unless a test
	// makes it), so no test depends on the machine's own.
	sys    string
	mu     sync.Mutex
	protos []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, &fakeAdmin{})
}

// newFixtureWith serves admin, a fakeAdmin with more of the service filled in.
func newFixtureWith(t *testing.T, admin edgev1connect.EdgeAdminServiceHandler) *fixture {
	t.Helper()
	mux := http.NewServeMux()
	f := &fixture{}
	path, h := edgev1connect.NewEdgeAdminServiceHandler(admin)
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.protos = append(f.protos, r.Proto)
		f.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	f.url, f.caFile, f.home, f.sys = srv.URL, caFile, filepath.Join(dir, "home"), filepath.Join(dir, "aegis-edge")
	return f
}

// run runs the CLI in-process with a clean environment plus env.
func (f *fixture) run(t *testing.T, stdin string, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = RunEnv(context.Background(), append([]string{"/usr/bin/aegisctl"}, args...), Env{
		Stdin:   strings.NewReader(stdin),
		Stdout:  &out,
		Stderr:  &errb,
		Getenv:  func(k string) string { return env[k] },
		HomeDir: func() (string, error) { return f.home, nil },
		// The packaged host's state dir, when a test makes it.
		SystemStateDir: f.sys,
	})
	return out.String(), errb.String(), code
}

// On a host with the package, the host-side commands find /var/lib/aegis-edge with
// no flag (sudo aegis edge enroll --token T), before ~/.aegis/edge; the flag and
// $AEGIS_EDGE_STATE_DIR still win.
func TestHostCommandsFindThePackagedStateDir(t *testing.T) {
	f := newFixture(t)
	_, errOut, _ := f.run(t, "", nil, "edge", "status")
	if !strings.Contains(errOut, "(state dir "+filepath.Join(f.home, ".aegis", "edge")+")") {
		t.Fatalf("no package: %q, want the home default", errOut)
	}
	if err := os.Mkdir(f.sys, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"edge", "status"}, {"edge", "keys", "rotate"}, {"edge", "token", "refresh"}, {"edge", "logout"}} {
		_, errOut, code := f.run(t, "", nil, cmd...)
		if code != 1 || !strings.Contains(errOut, "not enrolled (state dir "+f.sys+")") {
			t.Errorf("%v with the package's dir present: code %d, %q", cmd, code, errOut)
		}
	}
	other := t.TempDir()
	_, errOut, _ = f.run(t, "", map[string]string{"AEGIS_EDGE_STATE_DIR": other}, "edge", "status")
	if !strings.Contains(errOut, "(state dir "+other+")") {
		t.Errorf("$AEGIS_EDGE_STATE_DIR does not win: %q", errOut)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoginSavesProfileOnlyWhenAccepted(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad", "fedcba9876543210.0123456789abcdef0123456789abcdef\n")
	good := writeFile(t, dir, "good", goodToken+"\n")
	cfg := filepath.Join(f.home, ".config", "aegis", "config.yaml")

	out, errOut, code := f.run(t, "", nil, "login", "--server", f.url, "--token-file", bad, "--ca-file", f.caFile)
	if code == 0 || out != "" {
		t.Fatalf("refused token: code %d stdout %q", code, out)
	}
	if !strings.HasPrefix(errOut, "aegisctl: ") || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "refused this API token") {
		t.Fatalf("refused token: stderr %q, want one aegisctl: line", errOut)
	}
	if strings.Contains(errOut, "0123456789abcdef0123456789abcdef") {
		t.Fatalf("stderr leaks the secret: %q", errOut)
	}
	if _, err := os.Stat(cfg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("config written after a refused login: %v", err)
	}

	out, errOut, code = f.run(t, "", nil, "login", "--server", f.url+"/", "--token-file", good, "--ca-file", f.caFile)
	if code != 0 {
		t.Fatalf("login: code %d stderr %q", code, errOut)
	}
	if want := "logged in to " + f.url + " as operator of tenant t-0a1b2c3d (team)\n"; out != want {
		t.Fatalf("stdout %q, want %q", out, want)
	}
	fi, err := os.Stat(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("config mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Dir(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("config dir mode %v, want 0700", di.Mode().Perm())
	}
	raw, _ := os.ReadFile(cfg)
	if !strings.Contains(string(raw), goodToken) || !strings.Contains(string(raw), "BEGIN CERTIFICATE") {
		t.Fatalf("profile lacks token or CA:\n%s", raw)
	}
	f.mu.Lock()
	protos := append([]string(nil), f.protos...)
	f.mu.Unlock()
	if len(protos) == 0 {
		t.Fatal("no admin call recorded")
	}
	for _, p := range protos {
		if p != "HTTP/2.0" {
			t.Fatalf("admin call used %s, want HTTP/2.0", p)
		}
	}

	// The saved profile works, and prints the §9 JSON shape.
	out, errOut, code = f.run(t, "", nil, "edge", "hosts", "list", "-o", "json")
	if code != 0 {
		t.Fatalf("hosts list: code %d stderr %q", code, errOut)
	}
	var got struct {
		Hosts []map[string]any `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("hosts list -o json: %v\n%s", err, out)
	}
	if len(got.Hosts) != 2 {
		t.Fatalf("got %d hosts", len(got.Hosts))
	}
	h0, h1 := got.Hosts[0], got.Hosts[1]
	for _, k := range []string{"node_id", "name", "tenant", "status", "tags", "key_fingerprint", "key_rotated_at", "last_seen_at"} {
		if _, ok := h0[k]; !ok {
			t.Errorf("host json lacks %q", k)
		}
	}
	if h0["status"] != "Connected" || h1["status"] != "Revoked" {
		t.Errorf("statuses %v %v", h0["status"], h1["status"])
	}
	if h0["last_seen_at"] != "2026-04-28T13:32:11Z" {
		t.Errorf("last_seen_at %v, want RFC 3339 UTC to the second", h0["last_seen_at"])
	}
	if h0["key_rotated_at"] != nil || h1["last_seen_at"] != nil {
		t.Errorf("unset times must be null: %v %v", h0["key_rotated_at"], h1["last_seen_at"])
	}
	if tags, ok := h1["tags"].([]any); !ok || len(tags) != 0 {
		t.Errorf("no tags must be [], got %#v", h1["tags"])
	}
	if h0["tenant"] != "t-0a1b2c3d" {
		t.Errorf("tenant %v", h0["tenant"])
	}

	// A table in text mode.
	out, _, code = f.run(t, "", nil, "edge", "hosts", "list")
	if code != 0 {
		t.Fatal(code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NODE_ID") || !strings.Contains(lines[0], "TENANT") || !strings.HasSuffix(lines[0], "KEY_AGE  KEY_DUE_AT  OVERDUE") ||
		!strings.Contains(lines[1], "prod,web") || !strings.Contains(lines[2], "Revoked") || !strings.Contains(lines[2], "t-0a1b2c3d") {
		t.Fatalf("table:\n%s", out)
	}

	// NotFound reads as "no such host".
	_, errOut, code = f.run(t, "", nil, "edge", "hosts", "get", "n-000000000000")
	if code != 1 || !strings.HasPrefix(errOut, `aegisctl: no such host "n-000000000000"`) {
		t.Fatalf("get unknown host: code %d stderr %q", code, errOut)
	}

	// An env token file overrides the profile's; a refused one says "log in again".
	_, errOut, code = f.run(t, "", map[string]string{"AEGIS_TOKEN_FILE": bad}, "edge", "hosts", "list")
	if code != 1 || !strings.Contains(errOut, "the API token was refused: log in again") {
		t.Fatalf("refused profile token: code %d stderr %q", code, errOut)
	}
}

func TestLoginTokenFromStdinAndEnvProfile(t *testing.T) {
	f := newFixture(t)
	cfg := filepath.Join(t.TempDir(), "sub", "profile.yaml")
	env := map[string]string{"AEGIS_CONFIG": cfg}
	out, errOut, code := f.run(t, goodToken+"\n", env, "login", "--server", f.url, "--token-file", "-", "--ca-file", f.caFile)
	if code != 0 || !strings.HasPrefix(out, "logged in to ") {
		t.Fatalf("code %d stdout %q stderr %q", code, out, errOut)
	}
	if _, err := os.Stat(cfg); err != nil {
		t.Fatalf("AEGIS_CONFIG not used: %v", err)
	}

	// No profile at all, but the env stands in for one.
	dir := t.TempDir()
	tokFile := writeFile(t, dir, "tok", goodToken)
	env = map[string]string{"AEGIS_SERVER": f.url, "AEGIS_TOKEN_FILE": tokFile, "AEGIS_CA_FILE": f.caFile, "AEGIS_CONFIG": filepath.Join(dir, "none.yaml")}
	if _, errOut, code := f.run(t, "", env, "edge", "hosts", "list"); code != 0 {
		t.Fatalf("env profile: code %d stderr %q", code, errOut)
	}
}

func TestErrorsAreOneLine(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"edge", "status", "-o", "yaml"}, exitUsage, `aegisctl: -o must be text or json (got "yaml")`},
		{[]string{"edge", "enroll"}, exitUsage, "aegisctl: missing --token:"},
		{[]string{"bogus"}, exitUsage, `aegisctl: unknown command "bogus"`},
		{[]string{"edge", "hosts", "list"}, exitError, "aegisctl: not logged in: run `aegisctl login --server URL --token-file F`"},
		{[]string{"edge", "status", "--state-dir", t.TempDir()}, exitError, "aegisctl: this host is not enrolled"},
		{[]string{"edge", "hosts", "get", "n-1", "-o", "yaml"}, exitUsage, `aegisctl: -o must be text or json (got "yaml")`},
		{[]string{"edge", "hosts", "get", "n-1", "--bogus"}, exitUsage, "aegisctl: flag provided but not defined: -bogus"},
		{[]string{"edge", "hosts", "get", "n-1", "n-2"}, exitUsage, `aegisctl: unexpected argument "n-2"`},
	}
	for _, c := range cases {
		out, errOut, code := f.run(t, "", nil, c.args...)
		if code != c.code || out != "" || !strings.HasPrefix(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: code %d (want %d), stdout %q, stderr %q (want prefix %q, one line)", c.args, code, c.code, out, errOut, c.want)
		}
	}
}

func TestInvokedAsAegis(t *testing.T) {
	var out, errb bytes.Buffer
	code := RunEnv(context.Background(), []string{"/usr/local/bin/aegis", "nope"}, Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	if code != exitUsage || !strings.HasPrefix(errb.String(), "aegis: unknown command") {
		t.Fatalf("code %d stderr %q", code, errb.String())
	}
	out.Reset()
	if code := RunEnv(context.Background(), []string{"aegis", "--help"}, Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}); code != 0 {
		t.Fatalf("help: %d", code)
	}
	if !strings.Contains(out.String(), "aegis edge enroll --token") {
		t.Fatalf("help does not use the invoked name:\n%s", out.String())
	}
}
