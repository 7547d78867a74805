package session_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"google.golang.org/protobuf/proto"
)

// fakeConn hands the stream the envelopes pushed on in and records what it sends
// on out; a RefreshToken Send blocks (stuck is closed) until release is closed: a
// daemon that stopped reading while a command went down.
type fakeConn struct {
	in      chan *edgev1.SealNodeEnvelope
	out     chan *edgev1.EdgeCommand
	stuck   chan struct{}
	release chan struct{}
}

func (c *fakeConn) Receive() (*edgev1.SealNodeEnvelope, error) {
	env, ok := <-c.in
	if !ok {
		return nil, io.EOF
	}
	return env, nil
}

func (c *fakeConn) Send(cmd *edgev1.EdgeCommand) error {
	if cmd.GetRefreshToken() != nil {
		close(c.stuck)
		<-c.release
	}
	c.out <- cmd
	return nil
}

type fakeVerifier struct{ node string }

func (v fakeVerifier) Check(context.Context, *edgev1.SealNodeEnvelope) error { return nil }
func (v fakeVerifier) NodeID() string                                        { return v.node }
func (v fakeVerifier) Presented() (string, string)                           { return "kfp", "jti" }

type noTools struct{}

func (noTools) Progress(string, *edgev1.CommandProgress)  {}
func (noTools) Result(string, *edgev1.CommandResult) bool { return true }

func envelope(t *testing.T, seq uint64, ev *edgev1.EdgeEvent) *edgev1.SealNodeEnvelope {
	t.Helper()
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return &edgev1.SealNodeEnvelope{NodeId: "n-1", Sequence: seq, Payload: b}
}

func streamConfig(t *testing.T) (*session.StreamConfig, *session.Registry) {
	t.Helper()
	st := storeWith(t, "n-1")
	reg := session.NewRegistry(nil)
	return &session.StreamConfig{
		Registry:         reg,
		Presence:         session.NewPresence(),
		LastSeen:         session.NewLastSeen(st, slog.Default()),
		Store:            st,
		Tools:            noTools{},
		Now:              func() time.Time { return t0 },
		Logger:           slog.New(slog.DiscardHandler),
		Rand:             rand.Reader,
		PolicyMax:        func(context.Context, string) time.Duration { return 0 },
		LocalMaxKeyAge:   func(*edgev1.Hello) time.Duration { return 0 },
		LateShutdownHint: func() time.Duration { return 0 },
		ReceiveError:     func(context.Context, error) error { return nil },
		Encode: func(c session.Command) *edgev1.EdgeCommand {
			return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_RefreshToken{RefreshToken: &edgev1.RefreshTokenCommand{Reason: c.Reason}}}
		},
	}, reg
}

// While a command's Send is stuck (the daemon does not read), the handler still
// takes and answers the next envelopes: its acks wait in the outbox behind the
// command rather than on a lock the stuck Send holds, and go out in order once the
// daemon reads again.
func TestStuckCommandSendDoesNotStopTheReceiveLoop(t *testing.T) {
	cfg, reg := streamConfig(t)
	conn := &fakeConn{
		in:      make(chan *edgev1.SealNodeEnvelope),
		out:     make(chan *edgev1.EdgeCommand, 16),
		stuck:   make(chan struct{}),
		release: make(chan struct{}),
	}
	done := make(chan error, 1)
	go func() { done <- session.NewStream(cfg, conn, fakeVerifier{"n-1"}, func() {}).Run(t.Context()) }()

	conn.in <- envelope(t, 1, &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Hello{Hello: &edgev1.Hello{}}})
	if w := <-conn.out; w.GetWelcome() == nil {
		t.Fatalf("first message %v, want a Welcome", w)
	}
	if err := reg.Send("n-1", session.Command{Kind: session.CommandRefreshToken, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	<-conn.stuck
	hb := &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Heartbeat{Heartbeat: &edgev1.Heartbeat{}}}
	// Each push is taken only by a handler back in Receive: with a Send lock held
	// by the stuck command, the second would never be.
	for seq := uint64(2); seq <= 4; seq++ {
		select {
		case conn.in <- envelope(t, seq, hb):
		case err := <-done:
			t.Fatalf("stream ended early: %v", err)
		}
	}
	close(conn.release)
	if c := <-conn.out; c.GetRefreshToken() == nil {
		t.Fatalf("got %v, want the stuck RefreshToken first", c)
	}
	for seq := uint64(2); seq <= 3; seq++ {
		if c := <-conn.out; c.GetHeartbeatAck().GetSequence() != seq {
			t.Fatalf("got %v, want the ack of heartbeat %d", c, seq)
		}
	}
	close(conn.in)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The last heartbeat was taken before the hang-up, so its ack went out too.
	if c := <-conn.out; c.GetHeartbeatAck().GetSequence() != 4 {
		t.Fatalf("got %v, want the ack of heartbeat 4", c)
	}
	if _, ok := reg.Get("n-1"); ok {
		t.Fatal("stream still registered after it ended")
	}
}

// A daemon that does not read gets at most 64 answers queued: the next ends the
// stream (its body is closed), and the handler returns once the stuck Send does.
func TestFullOutboxEndsTheStream(t *testing.T) {
	cfg, reg := streamConfig(t)
	conn := &fakeConn{
		in:      make(chan *edgev1.SealNodeEnvelope),
		out:     make(chan *edgev1.EdgeCommand, 128),
		stuck:   make(chan struct{}),
		release: make(chan struct{}),
	}
	bodyClosed := make(chan struct{})
	var once sync.Once
	closeBody := func() { once.Do(func() { close(bodyClosed) }) }
	done := make(chan error, 1)
	go func() { done <- session.NewStream(cfg, conn, fakeVerifier{"n-1"}, closeBody).Run(t.Context()) }()

	conn.in <- envelope(t, 1, &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Hello{Hello: &edgev1.Hello{}}})
	<-conn.out
	if err := reg.Send("n-1", session.Command{Kind: session.CommandRefreshToken}); err != nil {
		t.Fatal(err)
	}
	<-conn.stuck
	hb := &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Heartbeat{Heartbeat: &edgev1.Heartbeat{}}}
	taken := 0
	for closed := false; !closed; {
		select {
		case conn.in <- envelope(t, uint64(taken+2), hb):
			taken++
		case <-bodyClosed:
			closed = true
		}
	}
	if taken != 65 {
		t.Fatalf("the stream took %d heartbeats before it ended, want 64 queued + 1", taken)
	}
	close(conn.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
