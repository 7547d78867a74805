package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
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

// The whole daemon against a real control plane: enroll, `edged run`, then the
// local API over the real socket reports the live connection.
func TestRunConnectsAndServesStatus(t *testing.T) {
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
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"edged", "run", "--state-dir", dir, "--config", cfg}, &bytes.Buffer{}, &stderr)
	}()
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
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("edged did not stop on cancel")
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
