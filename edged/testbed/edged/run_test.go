// Package edged_test runs the real edged binary against an in-process control plane.
package edged_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/enroll"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/localclient"
)

// edgedBin builds the real daemon once per test binary.
var edgedBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "edged-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "edged")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/aegis-edge/aegis/edged/cmd/edged").CombinedOutput()
	if err != nil {
		return "", &buildError{out: out, err: err}
	}
	return bin, nil
})

type buildError struct {
	out []byte
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + string(e.out) }

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

// The whole daemon, as its own process, against a real control plane: enroll,
// `edged run`, then the local API over the real socket reports the live connection;
// SIGTERM stops it cleanly and removes the socket.
func TestRunConnectsAndServesStatus(t *testing.T) {
	bin, err := edgedBin()
	if err != nil {
		t.Fatal(err)
	}
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: 50 * time.Millisecond})
	dir := filepath.Join(t.TempDir(), "edge")
	res, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "edged.yaml")
	if err := os.WriteFile(cfg, []byte("heartbeat_interval: 50ms\nreconnect_max_backoff: 200ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	cmd := exec.Command(bin, "run", "--state-dir", dir, "--config", cfg)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	client := localclient.New(dir)
	var st *edgev1.StatusResponse
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Status(ctx, connect.NewRequest(&edgev1.StatusRequest{}))
		if err == nil && resp.Msg.GetStatus() == "Connected" && resp.Msg.GetLastHeartbeatAck() != nil {
			st = resp.Msg
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never Connected (last: %v, %v); stderr:\n%s", resp, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	key, err := keystore.Open(dir).ReadKey()
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNodeId() != res.NodeID || st.GetKeyFingerprint() != fingerprint.Of(key.Public().(ed25519.PublicKey)) ||
		st.GetTenant().GetId() != res.Tenant.ID || st.GetServerUrl() != srv.URL || st.GetTokenExpires() == nil || st.GetConnectedSince() == nil {
		t.Fatalf("status %v", st)
	}
	fi, err := os.Stat(filepath.Join(dir, keystore.SocketFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}
	for _, secret := range []string{mustRead(t, filepath.Join(dir, keystore.TokenFile)), mustRead(t, filepath.Join(dir, keystore.KeyFile))} {
		if bytes.Contains([]byte(stderr.String()), []byte(secret)) {
			t.Fatal("a secret appeared in the log")
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("edged did not stop on SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(dir, keystore.SocketFile)); !os.IsNotExist(err) {
		t.Fatal("socket left behind")
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(b))
}
