package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/aegis-edge/aegis/controlplane/internal/config"
)

func sqliteConfig(t *testing.T, dir string) config.Config {
	t.Helper()
	cfg, err := config.Merge(config.Defaults(), config.File{Listen: "127.0.0.1:0", DataDir: dir}).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A second control plane on the same SQLite data dir refuses to start, says who
// holds it and what to do, and touches nothing; once the first stops, the next
// one starts.
func TestSecondServerOnSameDataDirRefused(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	first, err := New(ctx, Options{Config: sqliteConfig(t, dir)})
	if err != nil {
		t.Fatalf("first server: %v", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- first.Run(runCtx) }()

	tokenBefore, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("admin token of the first server: %v (dir holds %v)", err, entries)
	}

	_, err = New(ctx, Options{Config: sqliteConfig(t, dir)})
	if err == nil {
		t.Fatal("a second server on the same data dir started")
	}
	if !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second server: %v, want ErrDataDirInUse", err)
	}
	for _, want := range []string{dir, "pid " + strconv.Itoa(os.Getpid()), "--data-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not mention %q", err, want)
		}
	}
	tokenAfter, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil || string(tokenAfter) != string(tokenBefore) {
		t.Fatalf("the refused server changed the admin token (%v)", err)
	}
	// The first one is still serving.
	if err := first.Store().Ping(ctx); err != nil {
		t.Fatalf("first server's store after the refusal: %v", err)
	}

	stop()
	if err := <-done; err != nil {
		t.Fatalf("first server run: %v", err)
	}
	again, err := New(ctx, Options{Config: sqliteConfig(t, dir)})
	if err != nil {
		t.Fatalf("a server after the first stopped: %v", err)
	}
	runCtx, stop = context.WithCancel(ctx)
	go func() { done <- again.Run(runCtx) }()
	stop()
	if err := <-done; err != nil {
		t.Fatalf("second run: %v", err)
	}
}
