package server

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDataDirModes(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	perm := func(t *testing.T, dir string) os.FileMode {
		t.Helper()
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}

	t.Run("created 0700", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		if err := ensureDataDir(dir, log, os.Chmod); err != nil {
			t.Fatal(err)
		}
		if got := perm(t, dir); got != 0o700 {
			t.Fatalf("new data dir mode %04o, want 0700", got)
		}
	})
	t.Run("readable by others is tightened", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := ensureDataDir(dir, log, os.Chmod); err != nil {
			t.Fatal(err)
		}
		if got := perm(t, dir); got != 0o700 {
			t.Fatalf("data dir mode %04o after start, want 0700", got)
		}
	})
	t.Run("refused when it cannot be tightened", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		// Another user's directory: chmod fails with EPERM (simulated, since the
		// tests may run as root, for whom chmod always succeeds).
		err := ensureDataDir(dir, log, func(string, os.FileMode) error { return os.ErrPermission })
		if err == nil || !strings.Contains(err.Error(), "chmod 700") {
			t.Fatalf("ensureDataDir on an untightenable 0750 dir: %v, want a refusal saying chmod 700", err)
		}
	})
	t.Run("not a directory", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := ensureDataDir(f, log, os.Chmod); err == nil {
			t.Fatal("a file accepted as data dir")
		}
	})
}
