package localapi

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/localclient"
)

type fixed struct{ snap agent.Snapshot }

func (f fixed) Status() agent.Snapshot { return f.snap }

func TestStatusOverRealSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, keystore.SocketFile)
	// A stale socket file from a crashed daemon is replaced.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	exp := time.Date(2026, 5, 28, 14, 32, 11, 0, time.UTC)
	srv, err := Listen(sock, fixed{agent.Snapshot{
		NodeID: "n-7a3b2f000000", Tenant: keystore.Tenant{ID: "t-8d1c0000", Name: "default", Kind: "team"},
		Status: agent.StatusConnected, KeyFingerprint: "SHA256:abc", TokenExpires: exp, ServerURL: "https://127.0.0.1:7443",
	}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want socket 0600", st.Mode())
	}

	resp, err := localclient.New(dir).Status(context.Background(), connect.NewRequest(&edgev1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	m := resp.Msg
	if m.GetNodeId() != "n-7a3b2f000000" || m.GetStatus() != "Connected" || m.GetKeyFingerprint() != "SHA256:abc" ||
		m.GetTenant().GetName() != "default" || !m.GetTokenExpires().AsTime().Equal(exp) || m.GetConnectedSince() != nil {
		t.Fatalf("status: %v", m)
	}

	if err := srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	_, err = localclient.New(dir).Status(context.Background(), connect.NewRequest(&edgev1.StatusRequest{}))
	if err == nil || !localclient.IsNotRunning(err) {
		t.Fatalf("no daemon: IsNotRunning(%v) = false", err)
	}
}

func TestIsNotRunningRefusedSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, keystore.SocketFile)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody accepts: ECONNREFUSED
	_, err = localclient.New(dir).Status(context.Background(), connect.NewRequest(&edgev1.StatusRequest{}))
	if !localclient.IsNotRunning(err) {
		t.Fatalf("IsNotRunning(%v) = false", err)
	}
}
