package loadtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/aegis-edge/aegis/edged/testbed/loadtest"
)

var (
	buildOnce sync.Once
	cpBin     string
	buildErr  error
)

// controlplaneBinary builds the real controlplane binary once per test run.
func controlplaneBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "aegis-loadtest-bin-*")
		if err != nil {
			buildErr = err
			return
		}
		cpBin = filepath.Join(dir, "controlplane")
		out, err := exec.Command("go", "build", "-o", cpBin, "github.com/aegis-edge/aegis/controlplane/cmd/controlplane").CombinedOutput()
		if err != nil {
			buildErr = err
			t.Logf("%s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build controlplane: %v", buildErr)
	}
	return cpBin
}

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = loadtest.Run(context.Background(), append([]string{"aegis-loadtest"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// lastJSON decodes the last line of stdout, as a script would.
func lastJSON(t *testing.T, stdout string) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatalf("last line of stdout is not JSON: %v\n%s", err, stdout)
	}
	return m
}

// Bad input is refused with exit status 2 and a message naming the flag, before a
// control plane is started or a database is touched.
func TestBadInputIsRefusedBeforeAnythingChanges(t *testing.T) {
	work := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"rotate", "-o", "yaml"}, `-o "yaml"`},
		{[]string{"rotate", "--hosts", "0"}, "--hosts 0"},
		{[]string{"rotate", "--hosts", "4", "--concurrency", "1,8"}, "--concurrency 8 is more than --hosts 4"},
		{[]string{"rotate", "--concurrency", "1,x"}, "--concurrency"},
		{[]string{"rotate", "--rounds", "0"}, "--rounds 0"},
		{[]string{"rotate", "--duration", "200ms", "--rounds", "5"}, "--rounds 5"},
		{[]string{"fleet", "--batch", "0"}, "--batch 0"},
		{[]string{"connect", "--hosts", "5", "--revoke", "6"}, "--revoke 6"},
		{[]string{"connect", "--duration", "10ms"}, "--duration"},
		{[]string{"storm", "--heartbeat-interval", "1ms"}, "--heartbeat-interval"},
		{[]string{"enroll", "--concurrency", "0"}, "--concurrency 0"},
		{[]string{"connect", "--ca-file", "ca.crt"}, "--ca-file goes with --server"},
		{[]string{"connect", "--server", "http://127.0.0.1:1"}, "want https://"},
		{[]string{"connect", "--server", "https://127.0.0.1:1"}, "needs --ca-file"},
		{[]string{"storm", "--server", "https://127.0.0.1:1", "--database-url", "postgres://x"}, "--server measures a control plane someone else runs"},
		{[]string{"rotate", "--controlplane-bin", filepath.Join(work, "nope")}, "--controlplane-bin"},
		{[]string{"rotate", "--controlplane-bin", "/bin/true", "--database-url", "mysql://x"}, "postgres://"},
		{[]string{"rotate", "--controlplane-bin", "/bin/true", "--database-url", "postgres://postgres@127.0.0.1:5432/test?search_path=public"}, "search_path"},
		// Nothing listens on port 1: unreachable, said before anything is created.
		{[]string{"rotate", "--controlplane-bin", "/bin/true", "--work-dir", filepath.Join(work, "w"), "--database-url", "postgres://postgres:secret@127.0.0.1:1/test?connect_timeout=2"}, "cannot reach the database"},
	} {
		code, _, stderr := run(t, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
		if strings.Contains(stderr, "secret") {
			t.Errorf("%v: the password reached the message: %q", tc.args, stderr)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(work, "w")); len(entries) > 0 {
		t.Errorf("a refused run left %d entries in its work dir", len(entries))
	}
}

// A small run of each scenario on SQLite: the figures are there, with their
// same-run reference, and no host result is lost. (No figure is judged here: speed
// is what the tool reports, not what a test asserts.)
func TestSmallRunsOnSQLite(t *testing.T) {
	bin := controlplaneBinary(t)
	code, stdout, stderr := run(t, "rotate", "--controlplane-bin", bin, "--hosts", "8", "--concurrency", "1,4", "--duration", "300ms", "-o", "json")
	if code != 0 {
		t.Fatalf("rotate: exit %d\n%s", code, stderr)
	}
	m := lastJSON(t, stdout)
	if m["scenario"] != "rotate" || m["hosts"] != 8.0 || m["database"] != "sqlite" || m["per_second"].(float64) <= 0 || m["reference_ratio"].(float64) <= 0 || len(m["levels"].([]any)) != 2 || m["errors"] != 0.0 {
		t.Fatalf("rotate summary: %v", m)
	}
	// Each level alternated rotations and the reference (--rounds, default 5).
	for _, l := range m["levels"].([]any) {
		lv := l.(map[string]any)
		if lv["rounds"] != 5.0 || !(lv["reference_ratio_min"].(float64) > 0) || lv["reference_ratio_min"].(float64) > lv["reference_ratio_max"].(float64) {
			t.Errorf("rotate level: want 5 rounds and a positive ratio spread: %v", lv)
		}
	}
	if !strings.Contains(stderr, "enrolled 8 hosts") || !strings.Contains(stderr, "concurrency 4:") {
		t.Errorf("rotate printed no progress on stderr:\n%s", stderr)
	}

	code, stdout, stderr = run(t, "fleet", "--controlplane-bin", bin, "--hosts", "12", "--batch", "5", "-o", "json")
	if code != 0 {
		t.Fatalf("fleet: exit %d\n%s", code, stderr)
	}
	m = lastJSON(t, stdout)
	res, _ := m["results"].(map[string]any)
	if m["scenario"] != "fleet" || m["hosts"] != 12.0 || m["waves"] != 3.0 || res["succeeded"] != 12.0 || m["lost_results"] != 0.0 || m["duplicate_results"] != 0.0 || m["errors"] != 0.0 || m["reference_ratio"].(float64) <= 0 {
		t.Fatalf("fleet summary: %v", m)
	}
}

// The connection scenarios, small, on SQLite: every figure the issue names is in the
// JSON, the daemons all came back after the restart, and the revocations were seen.
func TestSmallConnectionScenarios(t *testing.T) {
	bin := controlplaneBinary(t)
	code, stdout, stderr := run(t, "connect", "--controlplane-bin", bin, "--hosts", "10", "--duration", "1s", "--settle", "0s",
		"--heartbeat-interval", "200ms", "--revoke", "3", "-o", "json")
	if code != 0 {
		t.Fatalf("connect: exit %d\n%s", code, stderr)
	}
	m := lastJSON(t, stdout)
	for _, f := range []string{"kib_per_daemon", "heartbeats_per_second", "cpu_us_per_heartbeat", "revocation_p50_ms", "revocation_p99_ms", "reference_per_second", "goroutines_per_daemon"} {
		if _, ok := m[f].(float64); !ok {
			t.Errorf("connect summary lacks %s: %v", f, m)
		}
	}
	if m["scenario"] != "connect" || m["hosts"] != 10.0 || m["revoked"] != 3.0 || m["errors"] != 0.0 || m["heartbeats_per_second"].(float64) <= 0 {
		t.Fatalf("connect summary: %v", m)
	}

	code, stdout, stderr = run(t, "storm", "--controlplane-bin", bin, "--hosts", "10", "--settle", "0s", "-o", "json")
	if code != 0 {
		t.Fatalf("storm: exit %d\n%s", code, stderr)
	}
	m = lastJSON(t, stdout)
	for _, f := range []string{"reconnect_seconds", "attempts_per_daemon", "peak_rss_ratio", "restart_seconds", "attests_per_daemon"} {
		if _, ok := m[f].(float64); !ok {
			t.Errorf("storm summary lacks %s: %v", f, m)
		}
	}
	// Every daemon was welcomed on a new stream at least once (the restart ended the old one).
	if m["scenario"] != "storm" || m["streams_per_daemon"].(float64) < 1 || m["attempts_per_daemon"].(float64) < 1 {
		t.Fatalf("storm summary: %v", m)
	}

	code, stdout, stderr = run(t, "enroll", "--controlplane-bin", bin, "--hosts", "20", "--concurrency", "4", "-o", "json")
	if code != 0 {
		t.Fatalf("enroll: exit %d\n%s", code, stderr)
	}
	if m = lastJSON(t, stdout); m["scenario"] != "enroll" || m["hosts"] != 20.0 || m["enrollments_per_second"].(float64) <= 0 || m["reference_ratio"].(float64) <= 0 {
		t.Fatalf("enroll summary: %v", m)
	}
}

// --server measures a control plane the tool did not start, and leaves it as it
// found it: the run's hosts are revoked and deleted afterwards.
func TestConnectAgainstAnExternalControlPlane(t *testing.T) {
	bin := controlplaneBinary(t)
	url, ca, token, hosts := loadtest.ExternalControlPlane(t, bin)
	code, stdout, stderr := run(t, "connect", "--server", url, "--ca-file", ca, "--token-file", token, "--hosts", "6",
		"--duration", "1s", "--settle", "0s", "--revoke", "2", "-o", "json")
	if code != 0 {
		t.Fatalf("connect --server: exit %d\n%s", code, stderr)
	}
	if m := lastJSON(t, stdout); m["database"] != "external" || m["hosts"] != 6.0 || m["revoked"] != 2.0 {
		t.Fatalf("summary: %v", m)
	}
	if n := hosts(); n != 0 {
		t.Fatalf("%d hosts left on the control plane after the run", n)
	}
	// A wrong token is refused before anything is enrolled.
	bad := filepath.Join(t.TempDir(), "bad.token")
	if err := os.WriteFile(bad, []byte("aegis_not-a-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "connect", "--server", url, "--ca-file", ca, "--token-file", bad, "--hosts", "2"); code != 2 || !strings.Contains(stderr, "--token-file") {
		t.Fatalf("bad token: exit %d, %s", code, stderr)
	}
}

// The same on PostgreSQL, in a schema the tool creates and drops.
func TestSmallRotateOnPostgres(t *testing.T) {
	url := os.Getenv("AEGIS_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("AEGIS_TEST_POSTGRES_URL is not set")
	}
	bin := controlplaneBinary(t)
	code, stdout, stderr := run(t, "rotate", "--controlplane-bin", bin, "--database-url", url, "--hosts", "6", "--concurrency", "2", "--duration", "300ms", "-o", "json")
	if code != 0 {
		t.Fatalf("rotate: exit %d\n%s", code, stderr)
	}
	if m := lastJSON(t, stdout); m["database"] != "postgres" || m["per_second"].(float64) <= 0 || m["reference_ratio"].(float64) <= 0 {
		t.Fatalf("rotate summary: %v", m)
	}
}
