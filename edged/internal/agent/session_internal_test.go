package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeCluster is the least of a control plane one stream needs: it answers Hello
// with Welcome and each Heartbeat with its ack, and hands every envelope to got.
type fakeCluster struct {
	edgev1connect.UnimplementedNodeClusterServiceHandler
	got chan *edgev1.SealNodeEnvelope
	// challenged, when set, runs inside Challenge: there the test holds an
	// attestation on "the network".
	mu         sync.Mutex
	challenged func()
	// token is what Attest hands out.
	token string
	// interval is the heartbeat interval Welcome gives (0: an hour); silent, when
	// set, makes the server stop acknowledging heartbeats (a half-open connection
	// seen from the daemon).
	interval time.Duration
	silent   bool
	// ended, when set, hears each ConnectEdge handler return.
	ended chan struct{}
}

func (f *fakeCluster) Challenge(ctx context.Context, _ *connect.Request[edgev1.ChallengeRequest]) (*connect.Response[edgev1.ChallengeResponse], error) {
	f.mu.Lock()
	hook := f.challenged
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	return connect.NewResponse(&edgev1.ChallengeResponse{Nonce: "nonce-1", ServerTime: timestamppb.Now()}), nil
}

func (f *fakeCluster) onChallenge(hook func()) {
	f.mu.Lock()
	f.challenged = hook
	f.mu.Unlock()
}

func (f *fakeCluster) Attest(ctx context.Context, _ *connect.Request[edgev1.AttestRequest]) (*connect.Response[edgev1.AttestResponse], error) {
	return connect.NewResponse(&edgev1.AttestResponse{
		NodeSecurityToken: f.token, TokenExpiresAt: timestamppb.New(time.Now().Add(time.Hour)), ServerTime: timestamppb.Now(),
	}), nil
}

func (f *fakeCluster) ConnectEdge(ctx context.Context, bs *connect.BidiStream[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]) error {
	if f.ended != nil {
		defer func() { f.ended <- struct{}{} }()
	}
	for {
		env, err := bs.Receive()
		if err != nil {
			return nil
		}
		var ev edgev1.EdgeEvent
		if err := proto.Unmarshal(env.GetPayload(), &ev); err != nil {
			return connect.NewError(connect.CodeInvalidArgument, err)
		}
		select {
		case f.got <- env:
		case <-ctx.Done():
			return nil
		}
		var reply *edgev1.EdgeCommand
		switch {
		case ev.GetHello() != nil:
			// An hour between heartbeats unless the test asks: only its kicks make one.
			interval := time.Hour
			if f.interval > 0 {
				interval = f.interval
			}
			reply = &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_Welcome{Welcome: &edgev1.Welcome{
				SessionId: "session-1", ServerTime: timestamppb.Now(), HeartbeatInterval: durationpb.New(interval),
			}}}
		case ev.GetHeartbeat() != nil && f.silent:
			continue
		case ev.GetHeartbeat() != nil:
			reply = &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_HeartbeatAck{HeartbeatAck: &edgev1.HeartbeatAck{
				Sequence: env.GetSequence(), ServerTime: timestamppb.Now(),
			}}}
		default:
			continue
		}
		if err := bs.Send(reply); err != nil {
			return nil
		}
	}
}

// sendHook runs a function, once armed, inside the next stream Send before the
// message goes out: there the test holds a Send stuck on "the network".
type sendHook struct {
	mu   sync.Mutex
	next func()
}

func (h *sendHook) arm(f func()) { h.mu.Lock(); h.next = f; h.mu.Unlock() }

func (h *sendHook) take() func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.next
	h.next = nil
	return f
}

func (h *sendHook) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (h *sendHook) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		return &hookedConn{StreamingClientConn: next(ctx, spec), h: h}
	}
}

func (h *sendHook) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

type hookedConn struct {
	connect.StreamingClientConn
	h *sendHook
}

func (c *hookedConn) Send(m any) error {
	if f := c.h.take(); f != nil {
		f()
	}
	return c.StreamingClientConn.Send(m)
}

// stuckSend is one Send held on the network: free says whether tokMu could be
// taken from inside it; release lets the Send go on (also when the test fails
// first, so that nothing stays stuck).
type stuckSend struct {
	free    chan bool
	gate    chan struct{}
	release func()
}

func (a *Agent) stickNextSend(t *testing.T, h *sendHook) *stuckSend {
	gate := make(chan struct{})
	s := &stuckSend{free: make(chan bool, 1), gate: gate, release: sync.OnceFunc(func() { close(gate) })}
	t.Cleanup(s.release)
	h.arm(func() {
		// Nothing else in this test takes tokMu, so a failed TryLock means the
		// sending goroutine holds it across this Send.
		free := a.tokMu.TryLock()
		if free {
			a.tokMu.Unlock()
		}
		s.free <- free
		if free {
			<-s.gate
		}
	})
	return s
}

// wait is the liveness guard of this file: what the test waits for either happens or
// the test fails saying what never did (no duration is asserted).
func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never happened", what)
		panic("unreachable")
	}
}

// nextEvent is the next envelope the server got, opened with pub.
func nextEvent(t *testing.T, got <-chan *edgev1.SealNodeEnvelope, pub ed25519.PublicKey, what string) *edgev1.EdgeEvent {
	t.Helper()
	env := wait(t, got, what)
	var ev edgev1.EdgeEvent
	if err := seal.Open(pub, env, &ev); err != nil {
		t.Fatalf("%s: the envelope does not open with the expected key: %v", what, err)
	}
	return &ev
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sessionAgent is an Agent in the state serve leaves it in before a session, its
// client pointed at fc through hook.
func sessionAgent(t *testing.T, fc *fakeCluster, hook *sendHook) *Agent {
	t.Helper()
	_, h := edgev1connect.NewNodeClusterServiceHandler(fc)
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	// Connections first: a stream the daemon left open would hold Close forever.
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	dir := keystore.Open(filepath.Join(t.TempDir(), "edge"))
	if err := dir.Create(); err != nil {
		t.Fatal(err)
	}
	a := New(Config{Dir: dir, Logger: slog.New(slog.DiscardHandler), HeartbeatInterval: time.Hour})
	a.client = edgev1connect.NewNodeClusterServiceClient(srv.Client(), srv.URL, connect.WithInterceptors(hook))
	a.nodeID, a.key, a.token = "node-1", newKey(t), "token-1"
	a.tokenChanged = make(chan struct{}, 1)
	a.revoked = make(chan string, 1)
	a.calls = newCalls(a.cfg, a.log, func(int, int) {})
	return a
}

// runSession runs one session of a until the test ends.
func runSession(t *testing.T, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := a.session(ctx, ctx, a.log)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := wait(t, done, "the session ending"); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("session: %v", err)
		}
	})
}

// A Send stuck on the network (a server that stopped reading, a full HTTP/2
// window) must not hold the lock the rest of the daemon swaps the key and token
// under: a rotation's swap and a tool call's read of the token finish meanwhile,
// and the heartbeat the swap asks for goes out under the new key.
func TestNoLockHeldWhileASessionSendIsStuck(t *testing.T) {
	fc := &fakeCluster{got: make(chan *edgev1.SealNodeEnvelope, 16)}
	hook := &sendHook{}
	a := sessionAgent(t, fc, hook)
	oldKey := a.key

	hello := a.stickNextSend(t, hook)
	runSession(t, a)

	// 1. Hello is stuck: a rotation swaps the key meanwhile.
	if !wait(t, hello.free, "the Hello send") {
		t.Fatal("tokMu is held across stream.Send (Hello)")
	}
	rotated := newKey(t)
	a.swap(rotation.Identity{Key: rotated, Token: "token-2"})
	if got := a.tokenContext(); got != "" {
		t.Fatalf("token context %q, want none", got)
	}
	hello.release()
	if nextEvent(t, fc.got, oldKey.Public().(ed25519.PublicKey), "Hello reaching the server").GetHello() == nil {
		t.Fatal("the first envelope is not a Hello")
	}
	// The swap asked for a heartbeat at once: after Welcome it carries the new key.
	ev := nextEvent(t, fc.got, rotated.Public().(ed25519.PublicKey), "the heartbeat after the swap")
	if ev.GetHeartbeat() == nil {
		t.Fatalf("got %T after the swap, want a heartbeat", ev.GetEvent())
	}

	// 2. A heartbeat is stuck on the live stream: the next swap still finishes.
	hb := a.stickNextSend(t, hook)
	a.heartbeatNow()
	if !wait(t, hb.free, "the heartbeat send") {
		t.Fatal("tokMu is held across stream.Send (heartbeat)")
	}
	again := newKey(t)
	a.swap(rotation.Identity{Key: again, Token: "token-3"})
	hb.release()
	nextEvent(t, fc.got, rotated.Public().(ed25519.PublicKey), "the stuck heartbeat reaching the server")
	if nextEvent(t, fc.got, again.Public().(ed25519.PublicKey), "the heartbeat after the second swap").GetHeartbeat() == nil {
		t.Fatal("the envelope after the second swap is not a heartbeat")
	}
}

// An attestation stuck on the network holds no lock either: from inside its
// Challenge tokMu is free and a tool call's token read finishes. The stream still
// sends nothing under the token the attestation is replacing (the server
// blacklists it the moment it answers): the heartbeat asked for meanwhile goes
// out after it, under the new token.
func TestNoLockHeldWhileAnAttestationIsStuck(t *testing.T) {
	fc := &fakeCluster{got: make(chan *edgev1.SealNodeEnvelope, 16), token: "token-2"}
	a := sessionAgent(t, fc, &sendHook{})
	pub := a.key.Public().(ed25519.PublicKey)
	runSession(t, a)
	if nextEvent(t, fc.got, pub, "Hello").GetHello() == nil {
		t.Fatal("the first envelope is not a Hello")
	}

	free, gate := make(chan bool, 1), make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release)
	fc.onChallenge(func() {
		ok := a.tokMu.TryLock()
		if ok {
			a.tokMu.Unlock()
		}
		free <- ok
		if ok {
			<-gate
		}
	})
	attested := make(chan error, 1)
	go func() {
		_, err := a.attest(context.Background(), a.log, "test")
		attested <- err
	}()
	if !wait(t, free, "the attestation's Challenge") {
		t.Fatal("tokMu is held across the attestation's RPCs")
	}
	if got := a.tokenContext(); got != "" {
		t.Fatalf("token context %q, want none", got)
	}
	a.heartbeatNow()
	release()
	if err := wait(t, attested, "the attestation"); err != nil {
		t.Fatal(err)
	}
	env := wait(t, fc.got, "the heartbeat asked for during the attestation")
	if env.GetNodeSecurityToken() != "token-2" {
		t.Fatalf("the heartbeat after the attestation carries %q, want the new token", env.GetNodeSecurityToken())
	}
	if tok, err := a.cfg.Dir.ReadToken(); err != nil || tok != "token-2" {
		t.Fatalf("node.token = %q, %v; want the new token", tok, err)
	}
}

// A stream whose server stopped answering (a half-open connection: a NAT that
// forgot it, a server that hung) ends once a heartbeat has gone unacknowledged for 3
// intervals and 1s, so the daemon reconnects instead of showing Connected forever;
// and the stream it gives up is closed, not left open on both sides.
func TestUnansweredHeartbeatsEndTheStream(t *testing.T) {
	fc := &fakeCluster{got: make(chan *edgev1.SealNodeEnvelope, 64), interval: 10 * time.Millisecond, silent: true, ended: make(chan struct{}, 1)}
	a := sessionAgent(t, fc, &sendHook{})
	var ahead atomic.Int64 // how far the daemon's clock has been moved on
	a.cfg.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		_, err := a.session(ctx, ctx, a.log)
		done <- err
	}()
	pub := a.key.Public().(ed25519.PublicKey)
	if nextEvent(t, fc.got, pub, "Hello").GetHello() == nil {
		t.Fatal("the first envelope is not a Hello")
	}
	if nextEvent(t, fc.got, pub, "a heartbeat").GetHeartbeat() == nil {
		t.Fatal("no heartbeat after Welcome")
	}
	if a.Status().Status != StatusConnected {
		t.Fatalf("status %s before any heartbeat went unanswered, want connected", a.Status().Status)
	}
	// 3 intervals (30ms) and 1s pass with no ack.
	ahead.Store(int64(2 * time.Second))
	go func() { // the server keeps reading what the daemon still sends
		for range fc.got {
		}
	}()
	if err := wait(t, done, "the session ending"); !errors.Is(err, errStale) {
		t.Fatalf("session ended with %v, want %v", err, errStale)
	}
	wait(t, fc.ended, "the server seeing the abandoned stream end")
}
