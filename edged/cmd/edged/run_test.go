package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/localclient"
)

// syncBuffer is a bytes.Buffer safe to read while the daemon writes logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRefusesLooseKey(t *testing.T) {
	d := keystore.Open(filepath.Join(t.TempDir(), "edge"))
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	if err := d.WriteKey(keystore.KeyFile, key); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d.File(keystore.KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"edged", "run", "--state-dir", d.Path()}, &out, &errb)
	if code == 0 {
		t.Fatal("edged started with a 0644 node.key")
	}
	want := "chmod 600 " + d.File(keystore.KeyFile)
	if !strings.Contains(errb.String(), want) || !strings.Contains(errb.String(), "0644") {
		t.Fatalf("stderr does not explain the fix %q: %s", want, errb.String())
	}
	if _, err := os.Stat(d.File(keystore.SocketFile)); !os.IsNotExist(err) {
		t.Fatal("a refused daemon created its socket")
	}
}

func TestWaitsForEnrollmentServesStatusAndStopsCleanly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "edge")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"edged", "run", "--state-dir", dir, "--log-level", "debug"}, &bytes.Buffer{}, &stderr)
	}()
	sock := filepath.Join(dir, keystore.SocketFile)
	deadline := time.Now().Add(5 * time.Second)
	var resp *connect.Response[edgev1.StatusResponse]
	for {
		var err error
		resp, err = localclient.New(dir).Status(ctx, connect.NewRequest(&edgev1.StatusRequest{}))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never answered: %v; stderr: %s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if resp.Msg.GetStatus() != "Disconnected" || !strings.Contains(resp.Msg.GetLastError(), "aegis edge enroll") {
		t.Fatalf("unenrolled status: %v", resp.Msg)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v %v", st, err)
	}
	if !strings.Contains(stderr.String(), "waiting for enrollment: run `aegis edge enroll --token T`") {
		t.Fatalf("no waiting line: %s", stderr.String())
	}

	// A second daemon on the same dir is refused while the first runs.
	var errb bytes.Buffer
	if code := run(ctx, []string{"edged", "run", "--state-dir", dir}, &bytes.Buffer{}, &errb); code == 0 ||
		!strings.Contains(errb.String(), "another edged is running on "+dir) {
		t.Fatalf("second daemon: code %d, %s", code, errb.String())
	}
	// ... and the refused one did not take the first one's socket away.
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket gone after a refused second daemon: %v", err)
	}

	cancel() // what SIGTERM does
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after stop: %v", err)
	}
	if running, _ := keystore.Open(dir).DaemonRunning(); running {
		t.Fatal("daemon lock still held after stop")
	}
}

func TestVersionAndHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"edged", "version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "edged ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"edged", "run", "--help"}, &out, &out); code != 0 ||
		!strings.Contains(out.String(), "--state-dir") || !strings.Contains(out.String(), "aegis edge enroll --token T") {
		t.Fatalf("help: %d %s", code, out.String())
	}
}

func TestBadConfigRefused(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "edged.yaml")
	os.WriteFile(cfg, []byte("heartbeat_interval: forever\n"), 0o600)
	var errb bytes.Buffer
	code := run(context.Background(), []string{"edged", "run", "--state-dir", t.TempDir() + "/s", "--config", cfg}, &bytes.Buffer{}, &errb)
	if code == 0 || !strings.Contains(errb.String(), "heartbeat_interval") {
		t.Fatalf("bad config: %d %s", code, errb.String())
	}
}

func TestBadPolicyRefused(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "edged.yaml")
	os.WriteFile(cfg, []byte("security_contexts:\n  ops:\n    cmd.run:\n      - command: echo\n"), 0o600)
	var errb bytes.Buffer
	code := run(context.Background(), []string{"edged", "run", "--state-dir", t.TempDir() + "/s", "--config", cfg}, &bytes.Buffer{}, &errb)
	if code == 0 || !strings.Contains(errb.String(), "line 4: security_contexts.ops.cmd.run[0].command") {
		t.Fatalf("bad policy: %d %s", code, errb.String())
	}
}

func TestHelpShowsThePolicy(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"edged", "run", "--help"}, &out, &out); code != 0 ||
		!strings.Contains(out.String(), "security_contexts:") || !strings.Contains(out.String(), "max_output_bytes") {
		t.Fatalf("help: %d %s", code, out.String())
	}
}
