package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/enroll"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
)

const hb = 50 * time.Millisecond

// clock is the server's clock for cptest: real time plus an offset the test moves,
// so the server still sees time pass between jumps.
type clock struct{ offset atomic.Int64 }

func newClock() *clock { return &clock{} }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func enrolled(t *testing.T, srv *cptest.Server) *keystore.Dir {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "edge")
	if _, err := enrollInto(t, srv, dir); err != nil {
		t.Fatal(err)
	}
	return keystore.Open(dir)
}

func enrollInto(t *testing.T, srv *cptest.Server, dir string) (enroll.Result, error) {
	t.Helper()
	return enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), StateDir: dir, Name: t.Name()})
}

type running struct {
	a    *agent.Agent
	stop func() error
}

func start(t *testing.T, dir *keystore.Dir, mod func(*agent.Config)) *running {
	t.Helper()
	cfg := agent.Config{
		Dir: dir, Logger: testLogger(t), HeartbeatInterval: hb,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		EnrollPoll: 20 * time.Millisecond, RPCTimeout: 3 * time.Second, Version: "test",
	}
	if mod != nil {
		mod(&cfg)
	}
	a := agent.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	var result error
	stop := func() error {
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(5 * time.Second):
			t.Error("agent did not stop")
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return &running{a: a, stop: stop}
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hostStatus(t *testing.T, srv *cptest.Server, nodeID string) edgev1.HostStatus {
	t.Helper()
	resp, err := srv.AdminClient().ListHosts(context.Background(), connect.NewRequest(&edgev1.ListHostsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range resp.Msg.GetHosts() {
		if h.GetNodeId() == nodeID {
			return h.GetStatus()
		}
	}
	t.Fatalf("host %s not listed", nodeID)
	return 0
}

func connected(r *running) func() bool {
	return func() bool { return r.a.Status().Status == agent.StatusConnected }
}

func TestConnectsAndHeartbeats(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	r := start(t, dir, nil)
	waitFor(t, "Connected", 5*time.Second, connected(r))
	s := r.a.Status()
	if s.NodeID != node.NodeID || s.SessionID == "" || s.ConnectedSince.IsZero() || s.KeyFingerprint == "" || s.TokenExpires.IsZero() {
		t.Fatalf("status %+v", s)
	}
	waitFor(t, "a heartbeat ack", 2*time.Second, func() bool { return !r.a.Status().LastHeartbeatAck.IsZero() })
	first := r.a.Status().LastHeartbeatAck
	waitFor(t, "later heartbeat acks", 2*time.Second, func() bool { return r.a.Status().LastHeartbeatAck.After(first) })
	waitFor(t, "CONNECTED in the host list", 3*time.Second, func() bool {
		return hostStatus(t, srv, node.NodeID) == edgev1.HostStatus_HOST_STATUS_CONNECTED
	})
	if err := r.stop(); err != nil {
		t.Fatalf("Run returned %v after a clean stop", err)
	}
	waitFor(t, "the host to go DISCONNECTED after edged stopped", 3*time.Second, func() bool {
		return hostStatus(t, srv, node.NodeID) != edgev1.HostStatus_HOST_STATUS_CONNECTED
	})
}

func TestPicksUpEnrollmentWhileRunning(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := keystore.Open(filepath.Join(t.TempDir(), "edge"))
	if err := dir.Create(); err != nil {
		t.Fatal(err)
	}
	r := start(t, dir, nil)
	time.Sleep(50 * time.Millisecond)
	if s := r.a.Status(); s.Status != agent.StatusDisconnected || s.Enrolled {
		t.Fatalf("before enrollment: %+v", s)
	}
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), StateDir: dir.Path()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Connected after enrollment", 5*time.Second, connected(r))
}

func TestReconnectsAfterServerRestart(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	r := start(t, dir, nil)
	waitFor(t, "Connected", 5*time.Second, connected(r))
	s1 := r.a.Status()
	srv.Restart(t)
	waitFor(t, "a new stream after restart", 5*time.Second, func() bool {
		s := r.a.Status()
		return s.Status == agent.StatusConnected && s.Streams > s1.Streams && s.SessionID != s1.SessionID
	})
	again, _ := dir.ReadNode()
	if again != node {
		t.Fatal("node.json changed across a reconnect")
	}
	waitFor(t, "CONNECTED in the host list", 3*time.Second, func() bool {
		return hostStatus(t, srv, node.NodeID) == edgev1.HostStatus_HOST_STATUS_CONNECTED
	})
}

func TestExpiredTokenReattests(t *testing.T) {
	clk := newClock()
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb, Now: clk.Now, TokenTTL: time.Hour})
	dir := enrolled(t, srv)
	tok0, _ := dir.ReadToken()
	r := start(t, dir, nil)
	waitFor(t, "Connected", 5*time.Second, connected(r))
	// Two hours later on the server: the token is expired and our timestamps skewed.
	clk.Advance(2 * time.Hour)
	waitFor(t, "a new token on disk", 5*time.Second, func() bool {
		tok, _ := dir.ReadToken()
		return tok != tok0
	})
	waitFor(t, "Connected with the new token", 5*time.Second, func() bool {
		s := r.a.Status()
		return s.Status == agent.StatusConnected && s.TokenExpires.After(clk.Now())
	})
	// Stopped daemon, server moves on again: the next start re-attests before or
	// after being refused, without any enrollment.
	r.stop()
	tok1, _ := dir.ReadToken()
	clk.Advance(2 * time.Hour)
	r2 := start(t, dir, nil)
	waitFor(t, "Connected after a restart with an expired token", 5*time.Second, connected(r2))
	tok2, _ := dir.ReadToken()
	if tok2 == tok1 {
		t.Fatal("token not refreshed after restart with an expired token")
	}
	if r2.a.Status().Status == agent.StatusRevoked {
		t.Fatal("an expired token made the agent give up")
	}
}

func TestRefreshBeforeExpiryKeepsStream(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb, TokenTTL: time.Minute})
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	tok0, _ := dir.ReadToken()
	// Jitter 0: the refresh comes the whole margin before expiry (1s after issue),
	// not up to half the margin later.
	r := start(t, dir, func(c *agent.Config) { c.RefreshMargin = 59 * time.Second; c.Jitter = func() float64 { return 0 } })
	waitFor(t, "Connected", 5*time.Second, connected(r))
	s0 := r.a.Status()
	waitFor(t, "an automatic refresh", 5*time.Second, func() bool {
		tok, _ := dir.ReadToken()
		return tok != tok0
	})
	refreshedAt := time.Now()
	// The stream must carry the new token: acks keep coming on the same session.
	waitFor(t, "acks after the refresh", 2*time.Second, func() bool {
		return r.a.Status().LastHeartbeatAck.After(refreshedAt.Add(2 * hb))
	})
	s1 := r.a.Status()
	if s1.SessionID != s0.SessionID || s1.Streams != s0.Streams || s1.Status != agent.StatusConnected {
		t.Fatalf("refresh reconnected: before %+v after %+v", s0, s1)
	}
	// Against the enrolled token, not s0: the refresh is due 1s after issue and may
	// land before Connected is first seen.
	if exp0 := rotation.TokenExpiry(tok0); exp0.IsZero() || !s1.TokenExpires.After(exp0) {
		t.Fatalf("token expiry did not move: %s -> %s", exp0, s1.TokenExpires)
	}
	d, err := srv.Store.GetDaemon(context.Background(), node.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	if d.SessionID != "" && d.SessionID != s0.SessionID {
		t.Fatalf("server session changed: %s -> %s", s0.SessionID, d.SessionID)
	}
}

func TestRevokedStopsForGood(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	r := start(t, dir, nil)
	waitFor(t, "Connected", 5*time.Second, connected(r))
	if err := srv.Store.RevokeDaemon(context.Background(), node.NodeID, time.Now()); err != nil {
		t.Fatal(err)
	}
	srv.Restart(t) // drop the stream; the reconnect is refused as revoked
	waitFor(t, "Revoked", 5*time.Second, func() bool { return r.a.Status().Status == agent.StatusRevoked })
	streams := r.a.Status().Streams
	rev, ok, err := dir.ReadRevoked()
	if err != nil || !ok || rev.NodeID != node.NodeID || rev.Reason != "revoked" {
		t.Fatalf("revocation marker: %+v %v %v", rev, ok, err)
	}
	if msg := r.a.Status().LastError; !strings.Contains(msg, "aegis edge enroll") {
		t.Fatalf("last error does not say how to re-enroll: %q", msg)
	}
	time.Sleep(300 * time.Millisecond)
	if s := r.a.Status(); s.Status != agent.StatusRevoked || s.Streams != streams {
		t.Fatalf("agent kept trying after revocation: %+v", s)
	}
	r.stop()
	// After a restart it still says Revoked, without contacting anyone.
	r2 := start(t, dir, nil)
	waitFor(t, "Revoked after restart", 2*time.Second, func() bool { return r2.a.Status().Status == agent.StatusRevoked })
	time.Sleep(200 * time.Millisecond)
	if s := r2.a.Status(); s.Streams != 0 || s.NodeID != node.NodeID || s.Status != agent.StatusRevoked {
		t.Fatalf("restarted revoked agent: %+v", s)
	}
	if hostStatus(t, srv, node.NodeID) != edgev1.HostStatus_HOST_STATUS_REVOKED {
		t.Fatal("host not REVOKED in the host list")
	}
}

func TestUnknownNodeStopsForGood(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	r := start(t, dir, nil)
	waitFor(t, "Connected", 5*time.Second, connected(r))
	r.stop()
	if err := srv.Store.DeleteDaemon(context.Background(), node.NodeID); err != nil {
		t.Fatal(err)
	}
	r2 := start(t, dir, nil)
	waitFor(t, "Revoked", 5*time.Second, func() bool { return r2.a.Status().Status == agent.StatusRevoked })
	rev, ok, _ := dir.ReadRevoked()
	if !ok || rev.Reason != "unknown_node" {
		t.Fatalf("marker %+v %v", rev, ok)
	}
}

func TestRefusesLooseKey(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	if err := os.Chmod(dir.File(keystore.KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	r := start(t, dir, nil)
	err := r.stop()
	if !errors.Is(err, keystore.ErrInsecure) || !strings.Contains(err.Error(), "chmod 600 "+dir.File(keystore.KeyFile)) {
		t.Fatalf("Run with a 0644 key: %v", err)
	}
	if r.a.Status().Streams != 0 {
		t.Fatal("connected with a 0644 key")
	}
}
