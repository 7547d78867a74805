package session

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/ratelimit"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Conn is the ConnectEdge stream as the session sees it: the RPC layer's bidi
// stream satisfies it.
type Conn interface {
	Receive() (*edgev1.SealNodeEnvelope, error)
	Send(*edgev1.EdgeCommand) error
}

// Verifier checks each envelope of one stream (nodeauth's stream verifier).
type Verifier interface {
	Check(ctx context.Context, env *edgev1.SealNodeEnvelope) error
	NodeID() string
	Presented() (keyFingerprint, tokenJTI string)
}

// ToolSink takes the tool-call progress and results a daemon reports.
type ToolSink interface {
	Progress(nodeID string, p *edgev1.CommandProgress)
	// Result reports whether a call followed here was waiting for it.
	Result(nodeID string, r *edgev1.CommandResult) bool
}

// StreamConfig wires the control plane's side of a ConnectEdge stream.
type StreamConfig struct {
	Registry          *Registry
	Presence          *Presence
	LastSeen          *LastSeen
	Store             store.Store
	Metrics           *metrics.Metrics
	Admission         *ratelimit.Admission
	Tools             ToolSink
	Now               func() time.Time
	Logger            *slog.Logger
	HeartbeatInterval time.Duration
	ReplicaID         string
	Rand              io.Reader
	// PolicyMax is the host's policy max key age for its Welcome, 0 for none.
	PolicyMax func(ctx context.Context, nodeID string) time.Duration
	// LocalMaxKeyAge is the host's own max key age from its Hello, stored with it.
	LocalMaxKeyAge func(*edgev1.Hello) time.Duration
	// LateShutdownHint is the reconnect hint for a stream arriving during shutdown.
	LateShutdownHint func() time.Duration
	// ReceiveError turns a failed Receive into a typed refusal, or nil when the
	// daemon hung up or went away.
	ReceiveError func(ctx context.Context, err error) error
	// Encode turns a queued Command into what is sent.
	Encode func(Command) *edgev1.EdgeCommand
}

// outboxLimit bounds what waits to be sent on one stream: past it the daemon is not
// reading and the stream ends.
const outboxLimit = 64

// Stream is the control plane's side of one ConnectEdge stream. Its methods are its
// states: admit, authenticate, open, welcome, serve, close; Run goes through them.
// The handler goroutine only receives (and answers what it receives); kicks and
// commands queued by the rest of the control plane are moved to the outbox by a
// goroutine started when one arrives. No lock is held across a Send: the outbox's
// mutex guards only its slice, and one sender at a time (the sending flag) drains
// it; a Disconnect is its last item.
type Stream struct {
	cfg       *StreamConfig
	conn      Conn
	verifier  Verifier
	closeBody func()

	hello     *edgev1.Hello
	nodeID    string
	sessionID string
	h         *Handle
	log       *slog.Logger

	// mu guards outbox and closed only, never a Send.
	mu     sync.Mutex
	outbox []outgoing
	// closed: nothing more is queued (a Disconnect was, a Send failed, or the
	// handler is returning).
	closed bool
	// sending: a goroutine is draining the outbox; senderDone gets a token each
	// time one stops.
	sending    atomic.Bool
	senderDone chan struct{}
	// kicked is the Kick that ended the stream, if one did.
	kicked atomic.Pointer[Kick]
	// draining: a drain goroutine is running (at most one at a time).
	draining atomic.Bool
}

type outgoing struct {
	cmd *edgev1.EdgeCommand
	// kick is set on the final Disconnect.
	kick *Kick
}

// NewStream returns the stream's session; closeBody ends its own Receive.
func NewStream(cfg *StreamConfig, conn Conn, v Verifier, closeBody func()) *Stream {
	return &Stream{cfg: cfg, conn: conn, verifier: v, closeBody: closeBody, senderDone: make(chan struct{}, 1)}
}

// Run is the whole stream: Hello -> Welcome, then each Heartbeat -> HeartbeatAck,
// until the daemon hangs up, an envelope is refused, or the server kicks the stream.
// It returns nil or the error the stream ends with (a typed refusal, or a store
// failure).
func (s *Stream) Run(ctx context.Context) error {
	first, err := s.conn.Receive()
	if err != nil {
		// The daemon left before saying anything, or said something unreadable.
		return s.cfg.ReceiveError(ctx, err)
	}
	if err := s.admit(first); err != nil {
		return err
	}
	if err := s.authenticate(ctx, first); err != nil {
		return err
	}
	if err := s.open(ctx); err != nil {
		if errors.Is(err, ErrClosed) {
			// Told to come back after the shutdown; a failed Send leaves nobody
			// to tell.
			_ = s.conn.Send(disconnect(Kick{Reason: ReasonShutdown, ReconnectAfter: s.cfg.LateShutdownHint(), Message: err.Error()}))
			return nil
		}
		return err
	}
	defer s.close(ctx)
	if !s.welcome(ctx) {
		return nil
	}
	return s.serve(ctx)
}

// admit paces the stream before any verification, so a stream over the rate costs
// the server no signature check: it is told its slot and comes back then.
func (s *Stream) admit(first *edgev1.SealNodeEnvelope) error {
	if ok, wait := s.cfg.Admission.Admit(first.GetNodeId(), s.cfg.Now()); !ok {
		s.cfg.Metrics.StreamAdmission("busy")
		return rejection.Retry(edgev1.RejectReason_REJECT_REASON_BUSY, wait,
			"the control plane is admitting streams at a bounded rate: come back in %s", wait.Round(time.Millisecond))
	}
	s.cfg.Metrics.StreamAdmission("admitted")
	return nil
}

// authenticate verifies the first envelope, which must carry a Hello.
func (s *Stream) authenticate(ctx context.Context, first *edgev1.SealNodeEnvelope) error {
	if err := s.verifier.Check(ctx, first); err != nil {
		return err
	}
	var ev edgev1.EdgeEvent
	if err := proto.Unmarshal(first.GetPayload(), &ev); err != nil || ev.GetHello() == nil {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "the first envelope of a stream must carry a Hello")
	}
	s.hello = ev.GetHello()
	s.nodeID = s.verifier.NodeID()
	s.presented()
	return nil
}

// open attaches the stream to the registry and records it: the session row, the
// host's local max key age and last-seen, in one transaction. ErrClosed: the
// registry is shutting down.
func (s *Stream) open(ctx context.Context) error {
	sessionID, err := newSessionID(s.cfg.Rand)
	if err != nil {
		return err
	}
	s.sessionID = sessionID
	now := s.cfg.Now()
	h, err := s.cfg.Registry.AttachSince(s.nodeID, sessionID, now)
	if err != nil {
		return err
	}
	s.h = h
	if err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.OpenSession(ctx, s.nodeID, sessionID, s.cfg.ReplicaID, now); err != nil {
			return err
		}
		if err := tx.SetDaemonLocalMaxKeyAge(ctx, s.nodeID, s.cfg.LocalMaxKeyAge(s.hello)); err != nil {
			return err
		}
		return tx.TouchLastSeen(ctx, map[string]time.Time{s.nodeID: now})
	}); err != nil {
		s.cfg.Registry.Release(h)
		return err
	}
	s.cfg.LastSeen.Touch(s.nodeID, now)
	s.log = s.cfg.Logger.With("node", s.nodeID, "session", sessionID)
	s.log.InfoContext(ctx, "stream open", "agent_version", s.hello.GetAgentVersion(), "hostname", s.hello.GetHostname())
	return nil
}

// welcome sends the Welcome; false when it could not be sent.
func (s *Stream) welcome(ctx context.Context) bool {
	w := &edgev1.Welcome{
		SessionId:         s.sessionID,
		HeartbeatInterval: durationpb.New(s.cfg.HeartbeatInterval),
	}
	if m := s.cfg.PolicyMax(ctx, s.nodeID); m > 0 {
		w.MaxKeyAge = durationpb.New(m)
	}
	// The time as it is sent, not the arrival's: in a storm a stream may wait on the
	// session write longer than the allowed clock skew, and a daemon that learned a
	// clock behind by that wait would have its next envelopes refused clock_skew.
	w.ServerTime = timestamppb.New(s.cfg.Now())
	// Nothing else sends yet: the registry's work reaches the stream from serve on.
	return s.conn.Send(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_Welcome{Welcome: w}}) == nil
}

// close clears the stream's row (unless a shutdown clears them all) and releases it
// from the registry.
func (s *Stream) close(ctx context.Context) {
	defer s.cfg.Registry.Release(s.h)
	if k := s.kicked.Load(); k != nil && k.Reason == ReasonShutdown {
		// The server clears all its rows in one statement once its streams are
		// gone (CloseReplicaSessions): 10,000 writes here, one a stream, would
		// make the drain, and so the restart, seconds longer.
		return
	}
	// The request context is gone by now; the row must still be cleared.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.cfg.Store.CloseSession(cctx, s.nodeID, s.sessionID); err != nil {
		s.cfg.Logger.Warn("close session", "node", s.nodeID, "err", err)
	}
}

// serve is the receive loop: each envelope is verified, refreshes last-seen, and is
// answered (heartbeat ack, tool result ack) through the outbox.
func (s *Stream) serve(ctx context.Context) error {
	log := s.log
	defer s.end()
	s.h.OnWork(s.wake)
	for {
		env, err := s.conn.Receive()
		if err != nil {
			if k := s.kicked.Load(); k != nil {
				log.InfoContext(ctx, "stream closed", "why", "disconnect", "reason", k.Reason)
				return nil
			}
			if rerr := s.cfg.ReceiveError(ctx, err); rerr != nil {
				return rerr
			}
			log.InfoContext(ctx, "stream closed", "why", "daemon hung up")
			return nil
		}
		if err := s.verifier.Check(ctx, env); err != nil {
			return err
		}
		s.presented()
		var ev edgev1.EdgeEvent
		if err := proto.Unmarshal(env.GetPayload(), &ev); err != nil {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "payload is not an EdgeEvent")
		}
		now := s.cfg.Now()
		s.cfg.LastSeen.Touch(s.nodeID, now)
		switch e := ev.GetEvent().(type) {
		case *edgev1.EdgeEvent_CommandProgress:
			s.cfg.Tools.Progress(s.nodeID, e.CommandProgress)
		case *edgev1.EdgeEvent_CommandResult:
			res := e.CommandResult
			if !s.cfg.Tools.Result(s.nodeID, res) {
				log.InfoContext(ctx, "tool result for no call followed here: acked, and kept a while for an attach", "command_id", res.GetCommandId())
			}
			// Acked as the answer to what was just received: a duplicate is acked
			// too, so the daemon's buffer drains either way.
			if !s.reply(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_CommandResultAck{CommandResultAck: &edgev1.CommandResultAck{
				CommandId: res.GetCommandId(),
			}}}) {
				return s.sendFailed(ctx)
			}
		case *edgev1.EdgeEvent_Heartbeat:
			s.cfg.Metrics.Heartbeat()
			if !s.reply(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_HeartbeatAck{HeartbeatAck: &edgev1.HeartbeatAck{
				Sequence:   env.GetSequence(),
				ServerTime: timestamppb.New(now),
			}}}) {
				return s.sendFailed(ctx)
			}
		default:
			// A second Hello or an event this server does not know yet: the
			// envelope was genuine, so it only refreshes last-seen.
		}
	}
}

// reply queues an answer and sends it (and whatever is queued) unless another
// goroutine is sending; false when the stream can send no more.
func (s *Stream) reply(cmd *edgev1.EdgeCommand) bool {
	if !s.enqueue(outgoing{cmd: cmd}) {
		return false
	}
	return s.flush()
}

// sendFailed ends the handler after a reply could not be sent: the daemon is gone,
// or a kick's Disconnect already ended the stream.
func (s *Stream) sendFailed(ctx context.Context) error {
	if k := s.kicked.Load(); k != nil {
		s.log.InfoContext(ctx, "stream closed", "why", "disconnect", "reason", k.Reason)
	}
	return nil
}

// enqueue appends o to the outbox; false when the stream takes no more. A full
// outbox (a daemon that does not read) ends the stream.
func (s *Stream) enqueue(o outgoing) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	if len(s.outbox) >= outboxLimit {
		s.closed = true
		s.outbox = nil
		s.mu.Unlock()
		s.log.Warn("stream closed", "why", "daemon is not reading", "queued", outboxLimit)
		s.closeBody()
		return false
	}
	s.outbox = append(s.outbox, o)
	if o.kick != nil {
		s.closed = true
	}
	s.mu.Unlock()
	return true
}

// pop takes the outbox's first item.
func (s *Stream) pop() (outgoing, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.outbox) == 0 {
		return outgoing{}, false
	}
	o := s.outbox[0]
	s.outbox[0] = outgoing{}
	s.outbox = s.outbox[1:]
	if len(s.outbox) == 0 {
		s.outbox = nil
	}
	return o, true
}

func (s *Stream) pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.outbox) > 0
}

// flush drains the outbox if no other goroutine is; false when a Send failed here.
func (s *Stream) flush() bool {
	ok := true
	for s.sending.CompareAndSwap(false, true) {
		for {
			o, more := s.pop()
			if !more {
				break
			}
			err := s.conn.Send(o.cmd)
			if o.kick != nil {
				k := o.kick
				if err == nil && k.Reason == ReasonRevoked && !k.RevokedAt.IsZero() {
					// The Disconnect is on the wire and the stream ends now:
					// the revocation has reached the host.
					s.cfg.Metrics.RevocationPropagated(s.cfg.Now().Sub(k.RevokedAt))
				}
				s.closeBody()
				if err != nil {
					ok = false
				}
				continue // the outbox is empty and closed
			}
			if err != nil {
				ok = false
				s.mu.Lock()
				s.closed = true
				s.outbox = nil
				s.mu.Unlock()
				s.closeBody()
			}
		}
		s.sending.Store(false)
		select {
		case s.senderDone <- struct{}{}:
		default:
		}
		// Something queued after the outbox looked empty and before the flag
		// fell would have found a sender and left: look again.
		if !s.pending() {
			break
		}
	}
	return ok
}

// end refuses every later item, sends what is queued (a kick's Disconnect queued
// just before the handler found the stream closed must still go out), and waits for
// a Send in progress.
func (s *Stream) end() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.flush()
	for s.sending.Load() {
		<-s.senderDone
	}
}

// wake is called (by the registry, on the queuing goroutine) after a kick or command
// was queued for this stream.
func (s *Stream) wake() {
	if s.draining.CompareAndSwap(false, true) {
		go s.drain()
	}
}

// drain moves what the registry queued to the outbox and sends it: commands in
// order, or a kick's Disconnect as the last message, after which the body is closed
// to end the handler's Receive.
func (s *Stream) drain() {
	for {
		select {
		case k := <-s.h.Kicked():
			s.kicked.Store(&k)
			if !s.enqueue(outgoing{cmd: disconnect(k), kick: &k}) {
				s.closeBody()
			} else {
				s.flush()
			}
			return // draining stays set: nothing more goes out on this stream
		case cmd := <-s.h.Commands():
			s.log.Info("command sent", "kind", cmd.Kind, "command_id", cmd.CommandID)
			if !s.enqueue(outgoing{cmd: s.cfg.Encode(*cmd)}) {
				s.closeBody()
				return
			}
			s.flush()
		default:
			s.draining.Store(false)
			// Something queued after the select looked and before the flag fell
			// would have found the flag set and started nobody: look again.
			if len(s.h.Kicked()) == 0 && len(s.h.Commands()) == 0 {
				return
			}
			if !s.draining.CompareAndSwap(false, true) {
				return
			}
		}
	}
}

// presented tells Presence what the envelope the verifier just accepted proved.
func (s *Stream) presented() {
	kfp, jti := s.verifier.Presented()
	s.cfg.Presence.Presented(s.verifier.NodeID(), Credentials{KeyFingerprint: kfp, TokenJTI: jti})
}

func disconnect(k Kick) *edgev1.EdgeCommand {
	reason := edgev1.DisconnectReason_DISCONNECT_REASON_UNSPECIFIED
	switch k.Reason {
	case ReasonShutdown:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_SHUTDOWN
	case ReasonReplaced:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_REPLACED
	case ReasonRevoked:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED
	case ReasonReattest:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_REATTEST
	}
	d := &edgev1.Disconnect{Reason: reason, Message: k.Message}
	if k.ReconnectAfter > 0 {
		d.ReconnectAfter = durationpb.New(k.ReconnectAfter)
	}
	return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_Disconnect{Disconnect: d}}
}

func newSessionID(rnd io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", err
	}
	return "s-" + hex.EncodeToString(b[:]), nil
}
