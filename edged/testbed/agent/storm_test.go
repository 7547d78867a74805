package agent_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/internal/agent"
)

// calls counts the RPCs an agent makes, by procedure.
type calls struct {
	challenge, attest, streams atomic.Int64
}

func (c *calls) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		switch req.Spec().Procedure {
		case edgev1connect.NodeClusterServiceChallengeProcedure:
			c.challenge.Add(1)
		case edgev1connect.NodeClusterServiceAttestProcedure:
			c.attest.Add(1)
		}
		return next(ctx, req)
	}
}

func (c *calls) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, s connect.Spec) connect.StreamingClientConn {
		if s.Procedure == edgev1connect.NodeClusterServiceConnectEdgeProcedure {
			c.streams.Add(1)
		}
		return next(ctx, s)
	}
}

func (c *calls) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// logBuf is a log the test reads back.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) lines(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// After a control-plane restart a daemon whose token is still valid comes back on
// that token: no challenge, no attestation, just a new stream.
func TestRestartResumesOnTheTokenWithoutAttesting(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	var n calls
	r := start(t, dir, func(c *agent.Config) { c.ClientOptions = append(c.ClientOptions, connect.WithInterceptors(&n)) })
	waitFor(t, "Connected", 5*time.Second, connected(r))

	srv.Restart(t)
	waitFor(t, "Connected again", 10*time.Second, func() bool {
		s := r.a.Status()
		return s.Status == agent.StatusConnected && s.Streams == 2
	})
	if c, a := n.challenge.Load(), n.attest.Load(); c != 0 || a != 0 {
		t.Fatalf("reconnecting with a valid token made %d challenges and %d attestations, want none", c, a)
	}
}

// A daemon over the admission rate is refused busy, waits for its slot (not less),
// is admitted on its second attempt, and says so once at info, not as a warning.
func TestBusyRefusalIsHonouredAndLoggedOnce(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb, StreamAdmissionRate: 1, StreamAdmissionBurst: 1})
	first := start(t, enrolled(t, srv), nil)
	waitFor(t, "the first daemon Connected", 5*time.Second, connected(first))

	var n calls
	var log logBuf
	second := start(t, enrolled(t, srv), func(c *agent.Config) {
		c.ClientOptions = append(c.ClientOptions, connect.WithInterceptors(&n))
		c.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	waitFor(t, "the second daemon Connected", 10*time.Second, connected(second))

	if s := n.streams.Load(); s != 2 {
		t.Errorf("%d stream attempts, want 2: refused once, admitted at its slot", s)
	}
	told := log.lines("asked this daemon to come back later")
	if len(told) != 1 || !strings.Contains(told[0], "level=INFO") || !strings.Contains(told[0], "why=busy") || !strings.Contains(told[0], "retry_at=") {
		t.Errorf("come-back lines: %q, want one INFO line with why=busy and retry_at", told)
	}
	if warn := log.lines("level=WARN"); len(warn) != 0 {
		t.Errorf("warnings for a refusal the server led: %q", warn)
	}
	if c := n.challenge.Load(); c != 0 {
		t.Errorf("a busy refusal made the daemon attest (%d challenges)", c)
	}
}
