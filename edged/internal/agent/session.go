package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/seal"
	"google.golang.org/protobuf/types/known/durationpb"
)

// edgeSession is one ConnectEdge stream seen from the daemon. Its methods are the
// states a stream goes through, in order:
//
//	open          start the stream, its sender and its receiver
//	admit         send Hello; wait for Welcome, or the refusal (busy, come back
//	              later) or Disconnect the server ends the stream with
//	welcomed      take the server's clock, policy and heartbeat interval: Connected
//	serve         the receive loop: heartbeats and acks, Disconnect, refresh/rotate/
//	              policy commands, tool calls, revocation and logout
//	rotated       rotate in place: after a key or token swap the next envelope, at
//	              once, is a heartbeat under the new identity
//	close         end the request side and give the server a moment to finish
//
// Every envelope goes through one sender goroutine, which authenticates it (the key
// and token read under tokMu and copied, the lock let go) before stream.Send: no
// lock is held across a network send, so a stalled stream never holds up a token
// refresh or a rotation. While an attestation replaces the token, the sender waits
// for the new one on a channel, not on the lock (holdEnvelopes, stream.go).
type edgeSession struct {
	a   *Agent
	log *slog.Logger
	// ctx is serving's: its end closes the stream cleanly. callsCtx is the tool
	// calls', which outlive the stream. sctx is the stream's own, cut by cancel; it
	// outlives ctx by the moment close takes.
	ctx, callsCtx, sctx context.Context
	cancel              context.CancelFunc

	stream *connect.BidiStreamForClient[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]
	id     string

	out      chan outgoing
	recv     chan received
	recvDone chan struct{}

	// unacked holds the heartbeats the server has not acknowledged (only serve's
	// goroutine touches it); interval is the heartbeat interval Welcome named.
	unacked  map[uint64]time.Time
	interval time.Duration
}

// outgoing is one event handed to the sender; done gets its sequence number once it
// is on the wire, or why it is not.
type outgoing struct {
	ev   *edgev1.EdgeEvent
	done chan sendResult
}

type sendResult struct {
	seq uint64
	err error
}

type received struct {
	cmd *edgev1.EdgeCommand
	err error
}

// session runs one ConnectEdge stream. welcomed says whether it got as far as a
// Welcome (then the reconnect backoff starts over).
func (a *Agent) session(ctx, callsCtx context.Context, log *slog.Logger) (welcomed bool, err error) {
	s := a.open(ctx, callsCtx, log)
	defer s.cancel()
	w, err := s.admit()
	if err != nil {
		return false, err
	}
	s.welcomed(w)
	return true, s.serve()
}

// open starts the stream with its sender and receiver goroutines; both end with sctx.
func (a *Agent) open(ctx, callsCtx context.Context, log *slog.Logger) *edgeSession {
	// The stream outlives ctx by a moment so that on shutdown it is closed cleanly
	// (end of request stream) rather than reset.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &edgeSession{
		a: a, log: log, ctx: ctx, callsCtx: callsCtx, sctx: sctx, cancel: cancel,
		stream:   a.client.ConnectEdge(sctx),
		id:       randomID(),
		out:      make(chan outgoing),
		recv:     make(chan received, 1),
		recvDone: make(chan struct{}),
		unacked:  map[uint64]time.Time{},
	}
	go s.sender()
	go s.receiver()
	return s
}

// identity is what an envelope is authenticated with, copied out of the Agent.
type identity struct {
	nodeID string
	key    ed25519.PrivateKey
	token  string
	now    time.Time
}

// credentials reads the key and token under tokMu (a rotation swaps both at once)
// and lets go: the copy is used after the lock is released. While an attestation
// is replacing the token it waits for the new one, holding no lock; false: the
// stream ended meanwhile.
func (s *edgeSession) credentials() (identity, bool) {
	a := s.a
	for {
		a.tokMu.Lock()
		gate := a.attesting
		if gate == nil {
			id := identity{nodeID: a.nodeID, key: a.key, token: a.token, now: a.serverNow()}
			a.tokMu.Unlock()
			return id, true
		}
		a.tokMu.Unlock()
		select {
		case <-gate:
		case <-s.sctx.Done():
			return identity{}, false
		}
	}
}

// authenticate seals ev as envelope seq of this stream under the current identity.
func (s *edgeSession) authenticate(ev *edgev1.EdgeEvent, seq uint64) (*edgev1.SealNodeEnvelope, error) {
	id, ok := s.credentials()
	if !ok {
		return nil, io.EOF
	}
	return seal.Seal(id.key, seal.Header{
		Kind:     edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT,
		Token:    id.token,
		NodeID:   id.nodeID,
		StreamID: s.id,
		Sequence: seq,
		Time:     id.now,
	}, ev)
}

// sender owns the request side: it numbers, authenticates and sends each envelope
// in turn, so sequence numbers reach the server in order, holding no lock while it
// sends. When the stream ends it closes the request side: while the request body is
// idle, that is what lets the HTTP/2 transport notice the cancelled context and reset
// the stream. Without it a stream the daemon gave up (no ack for 3 intervals, no
// Welcome in time, a protocol error) stayed open on both sides, its receiver
// goroutine and the server's handler with it.
func (s *edgeSession) sender() {
	var seq uint64
	for {
		var o outgoing
		select {
		case o = <-s.out:
		case <-s.sctx.Done():
			_ = s.stream.CloseRequest()
			return
		}
		seq++
		env, err := s.authenticate(o.ev, seq)
		if err == nil {
			err = s.stream.Send(env)
		}
		if err == nil {
			n := seq
			s.a.update(func(sn *Snapshot) { sn.Sent = n })
		}
		o.done <- sendResult{seq, err}
	}
}

// send hands ev to the sender (tool calls send from their own goroutines too) and
// returns its sequence number once it is on the wire.
func (s *edgeSession) send(ev *edgev1.EdgeEvent) (uint64, error) {
	o := outgoing{ev: ev, done: make(chan sendResult, 1)}
	select {
	case s.out <- o:
	case <-s.sctx.Done():
		return 0, io.EOF
	}
	r := <-o.done
	if r.err != nil {
		return 0, r.err
	}
	return r.seq, nil
}

// receiver hands each command (and finally the error that ends the stream) to
// whichever state is waiting for it.
func (s *edgeSession) receiver() {
	defer close(s.recvDone)
	for {
		cmd, err := s.stream.Receive()
		select {
		case s.recv <- received{cmd, err}:
		case <-s.sctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// sendFailed turns a failed Send (io.EOF: the server ended the stream) into the
// server's actual error, which Receive reports, and cuts the stream.
func (s *edgeSession) sendFailed(err error) error {
	defer s.cancel()
	if !errors.Is(err, io.EOF) {
		return err
	}
	select {
	case r := <-s.recv:
		if r.err != nil {
			return eofMeaning(r.err)
		}
	case <-time.After(2 * time.Second):
	}
	return errors.New("the control plane closed the stream")
}

// admit sends Hello and waits for the server's answer: Welcome, or the refusal or
// Disconnect that ends the stream (reconnect reads their retry hints: endingOf).
func (s *edgeSession) admit() (*edgev1.Welcome, error) {
	a := s.a
	hostname, _ := os.Hostname()
	hello := &edgev1.Hello{AgentVersion: a.cfg.Version, Hostname: hostname, Os: runtime.GOOS}
	if a.cfg.MaxKeyAge > 0 { // the control plane shows the host's due time by it too
		hello.LocalMaxKeyAge = durationpb.New(a.cfg.MaxKeyAge)
	}
	if _, err := s.send(&edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Hello{Hello: hello}}); err != nil {
		return nil, s.sendFailed(err)
	}
	select {
	case <-s.ctx.Done():
		s.close()
		return nil, s.ctx.Err()
	case r := <-a.revoked:
		s.close()
		return nil, &revokedSignal{reason: r}
	case <-a.loggedOut:
		s.close()
		return nil, errLoggedOut
	case <-time.After(a.cfg.WelcomeTimeout):
		s.cancel()
		return nil, fmt.Errorf("the control plane did not answer Hello within %s", a.cfg.WelcomeTimeout)
	case r := <-s.recv:
		if r.err != nil {
			return nil, eofMeaning(r.err)
		}
		if d := r.cmd.GetDisconnect(); d != nil {
			return nil, disconnectOf(d)
		}
		w := r.cmd.GetWelcome()
		if w == nil {
			s.cancel()
			return nil, fmt.Errorf("protocol error: expected Welcome, got %T", r.cmd.GetCommand())
		}
		return w, nil
	}
}

func disconnectOf(d *edgev1.Disconnect) error {
	return &disconnectError{reason: d.GetReason(), after: d.GetReconnectAfter().AsDuration(), msg: d.GetMessage()}
}

// welcomed takes what Welcome says (the server's clock, its rotation policy, the
// heartbeat interval) and shows the stream as connected.
func (s *edgeSession) welcomed(w *edgev1.Welcome) {
	a := s.a
	a.learnServerTime(w.GetServerTime().AsTime())
	a.welcomePolicy(w) // cadence.go
	s.interval = a.cfg.HeartbeatInterval
	if d := w.GetHeartbeatInterval().AsDuration(); d > 0 {
		s.interval = d
	}
	now := a.cfg.Now()
	a.update(func(sn *Snapshot) {
		sn.Status = StatusConnected
		sn.SessionID = w.GetSessionId()
		sn.ConnectedSince = now.UTC()
		sn.LastError = ""
		sn.Streams++
		sn.Acked = 0
	})
	s.log.Info("connected to the control plane", "session_id", w.GetSessionId(), "heartbeat_interval", s.interval)
}

// serve is the welcomed stream's loop, until the stream ends, serving ends, the
// identity is revoked or logged out of.
func (s *edgeSession) serve() error {
	a := s.a
	// Tool calls send on this stream from now on; unacknowledged results go first.
	defer a.calls.disconnected()
	a.calls.connected(func(ev *edgev1.EdgeEvent) error {
		_, err := s.send(ev)
		return err
	})
	ticker := time.NewTicker(s.interval)
	defer ticker.Stop()
	for {
		var err error
		select {
		case <-s.ctx.Done():
			s.close()
			return s.ctx.Err()
		case r := <-a.revoked:
			s.close()
			return &revokedSignal{reason: r}
		case <-a.loggedOut:
			s.close()
			return errLoggedOut
		case <-a.kick:
			err = s.rotated()
		case <-ticker.C:
			err = s.tick()
		case r := <-s.recv:
			err = s.dispatch(r)
		}
		if err != nil {
			return err
		}
	}
}

// rotated is rotation in place: the key or token just changed, and the next
// envelope, at once, carries it (the stream stays up).
func (s *edgeSession) rotated() error {
	return s.heartbeat()
}

// tick is the heartbeat interval: a heartbeat unacknowledged for 3 intervals means
// a half-open connection; otherwise send the next one.
func (s *edgeSession) tick() error {
	stale := 3*s.interval + time.Second
	for _, at := range s.unacked {
		if s.a.cfg.Now().Sub(at) > stale {
			s.cancel()
			return errStale
		}
	}
	return s.heartbeat()
}

func (s *edgeSession) heartbeat() error {
	a := s.a
	n, err := s.send(&edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Heartbeat{Heartbeat: &edgev1.Heartbeat{
		Uptime: durationpb.New(a.cfg.Now().Sub(a.started)),
	}}})
	if err != nil {
		return s.sendFailed(err)
	}
	s.unacked[n] = a.cfg.Now()
	return nil
}

// dispatch acts on one received command; an error ends the stream. Work that
// takes RPCs or runs tools is started off this goroutine, so the stream keeps
// reading (and acking) meanwhile.
func (s *edgeSession) dispatch(r received) error {
	if r.err != nil {
		return eofMeaning(r.err)
	}
	switch c := r.cmd.GetCommand().(type) {
	case *edgev1.EdgeCommand_HeartbeatAck:
		s.acked(c.HeartbeatAck)
	case *edgev1.EdgeCommand_Disconnect:
		s.cancel()
		return disconnectOf(c.Disconnect)
	case *edgev1.EdgeCommand_Welcome:
		// A second Welcome is harmless; ignore it.
	case *edgev1.EdgeCommand_RefreshToken, *edgev1.EdgeCommand_RotateKey, *edgev1.EdgeCommand_RotationPolicy:
		s.a.handleCommand(s.ctx, s.log, r.cmd) // rotate.go
	case *edgev1.EdgeCommand_InvokeTool, *edgev1.EdgeCommand_CancelTool, *edgev1.EdgeCommand_CommandResultAck,
		*edgev1.EdgeCommand_QueryTool:
		s.a.handleToolCommand(s.callsCtx, r.cmd) // toolcalls.go
	}
	return nil
}

// acked settles the heartbeats up to ack's sequence (acks come in order).
func (s *edgeSession) acked(ack *edgev1.HeartbeatAck) {
	a := s.a
	a.learnServerTime(ack.GetServerTime().AsTime())
	for n := range s.unacked {
		if n <= ack.GetSequence() {
			delete(s.unacked, n)
		}
	}
	at := a.cfg.Now().UTC()
	a.update(func(sn *Snapshot) {
		sn.LastHeartbeatAck = at
		sn.Acked = max(sn.Acked, ack.GetSequence())
	})
	s.log.Debug("heartbeat acknowledged", "sequence", ack.GetSequence())
}

// close ends the request side and waits briefly for the server to finish.
func (s *edgeSession) close() {
	s.a.calls.disconnected()
	_ = s.stream.CloseRequest()
	select {
	case <-s.recvDone:
	case <-s.recv:
	case <-time.After(2 * time.Second):
	}
	s.cancel()
	_ = s.stream.CloseResponse()
}

func eofMeaning(err error) error {
	if errors.Is(err, io.EOF) {
		return errors.New("the control plane closed the stream")
	}
	return err
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
