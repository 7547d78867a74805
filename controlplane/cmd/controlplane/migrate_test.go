package main

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
)

type migrateStatus struct {
	Database   string `json:"database"`
	Pending    int    `json:"pending"`
	Migrations []struct {
		Version int    `json:"version"`
		Applied bool   `json:"applied"`
		At      string `json:"applied_at"`
	} `json:"migrations"`
}

func statusJSON(t *testing.T, args ...string) migrateStatus {
	t.Helper()
	code, out, errb := runCmd(t, append([]string{"migrate", "status", "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("migrate status: %d %s", code, errb)
	}
	var st migrateStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	return st
}

// These tests run the cli app in-process and not in parallel: urfave/cli's help and
// version flags are package globals it writes to on every run.

// status changes nothing; up applies everything once; a second up applies nothing.
func testMigrate(t *testing.T, kind string, args ...string) {
	before := statusJSON(t, args...)
	if before.Database != kind || before.Pending == 0 || before.Pending != len(before.Migrations) {
		t.Fatalf("fresh database: %+v", before)
	}
	if again := statusJSON(t, args...); again.Pending != before.Pending {
		t.Fatalf("status changed the database: %+v", again)
	}
	code, out, errb := runCmd(t, append([]string{"migrate", "up"}, args...)...)
	if code != 0 || !strings.Contains(out, "applied "+itoa(before.Pending)+" migration(s)") {
		t.Fatalf("migrate up: %d %q %s", code, out, errb)
	}
	after := statusJSON(t, args...)
	if after.Pending != 0 {
		t.Fatalf("after up: %+v", after)
	}
	for _, m := range after.Migrations {
		if !m.Applied || m.At == "" {
			t.Fatalf("migration %d not applied: %+v", m.Version, after)
		}
	}
	code, out, _ = runCmd(t, append([]string{"migrate"}, args...)...)
	if code != 0 || !strings.Contains(out, "applied 0 migration(s)") {
		t.Fatalf("second migrate: %d %q", code, out)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestMigrateSQLite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	testMigrate(t, "sqlite", "--data-dir", dir)
}

func TestMigratePostgres(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	// A data dir of its own: the default, ./aegis-data, is inside the source tree.
	testMigrate(t, "postgres", "--database-url", url, "--data-dir", t.TempDir())
}

func TestMigrateBadInput(t *testing.T) {
	code, _, errb := runCmd(t, "migrate", "sideways", "--data-dir", t.TempDir())
	if code == 0 || !strings.Contains(errb, "controlplane migrate status") {
		t.Fatalf("unknown subcommand: %d %s", code, errb)
	}
	code, _, errb = runCmd(t, "migrate", "status", "--database-url", "mysql://x")
	if code == 0 || !strings.Contains(errb, "unsupported --database-url scheme") {
		t.Fatalf("bad url: %d %s", code, errb)
	}
	code, _, errb = runCmd(t, "migrate", "status", "-o", "yaml", "--data-dir", t.TempDir())
	if code == 0 || !strings.Contains(errb, "want text or json") {
		t.Fatalf("bad -o: %d %s", code, errb)
	}
}

func TestCheckConfigAndVersion(t *testing.T) {
	dir := t.TempDir()
	code, out, errb := runCmd(t, "serve", "--check-config", "--data-dir", filepath.Join(dir, "d"), "--metrics-listen", "0.0.0.0:9090", "--log-format", "json")
	if code != 0 || !strings.HasPrefix(out, "configuration ok") {
		t.Fatalf("good config: %d %q %s", code, out, errb)
	}
	if _, err := filepath.Glob(filepath.Join(dir, "d", "*")); err != nil {
		t.Fatal(err)
	}
	code, _, errb = runCmd(t, "serve", "--check-config", "--tls-cert", filepath.Join(dir, "missing.crt"), "--tls-key", filepath.Join(dir, "missing.key"))
	if code == 0 || !strings.Contains(errb, "--tls-cert") {
		t.Fatalf("missing TLS files: %d %s", code, errb)
	}
	code, out, _ = runCmd(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "controlplane version ") || !strings.Contains(out, "(commit ") {
		t.Fatalf("--version: %d %q", code, out)
	}
}
