package agent_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/internal/agent"
)

// stuckSend makes the stream's Send block, once armed, until released: a network
// send that does not complete (a full HTTP/2 window, a stalled link).
type stuckSend struct {
	mu      sync.Mutex
	once    sync.Once
	armed   bool
	blocked chan struct{} // closed when a Send is stuck
	release chan struct{}
}

func newStuckSend() *stuckSend {
	return &stuckSend{blocked: make(chan struct{}), release: make(chan struct{})}
}

func (s *stuckSend) arm() { s.mu.Lock(); s.armed = true; s.mu.Unlock() }

func (s *stuckSend) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (s *stuckSend) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		return &stuckConn{StreamingClientConn: next(ctx, spec), s: s}
	}
}

func (s *stuckSend) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

type stuckConn struct {
	connect.StreamingClientConn
	s *stuckSend
}

func (c *stuckConn) Send(m any) error {
	c.s.mu.Lock()
	armed := c.s.armed
	c.s.mu.Unlock()
	if armed {
		c.s.once.Do(func() { close(c.s.blocked) })
		<-c.s.release
	}
	return c.StreamingClientConn.Send(m)
}

// While the stream's send is stuck on the network, the daemon can still refresh
// its token (which swaps the token under the agent's lock): no lock is held
// across a network send.
func TestNoLockHeldAcrossAStuckSend(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	stuck := newStuckSend()
	r := start(t, dir, func(c *agent.Config) {
		c.ClientOptions = []connect.ClientOption{connect.WithInterceptors(stuck)}
	})
	waitFor(t, "Connected", 5*time.Second, connected(r))
	tok0, _ := dir.ReadToken()

	stuck.arm()
	select {
	case <-stuck.blocked: // the next heartbeat is stuck in Send
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat was sent")
	}
	refreshed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := r.a.RefreshToken(ctx, "test")
		refreshed <- err
	}()
	select {
	case err := <-refreshed:
		if err != nil {
			t.Fatalf("token refresh while a send is stuck: %v", err)
		}
	case <-time.After(8 * time.Second):
		close(stuck.release)
		t.Fatal("the token refresh waited for a stuck network send: a lock is held across it")
	}
	if tok, _ := dir.ReadToken(); tok == tok0 {
		t.Fatal("the token on disk did not change")
	}
	close(stuck.release)
}
