package rpc

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/internal/challenge"
	"github.com/aegis-edge/aegis/controlplane/internal/enroll"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/ratelimit"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/revocation"
	"github.com/aegis-edge/aegis/controlplane/internal/rotation"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/throttle"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ClusterConfig wires the NodeClusterService handler.
type ClusterConfig struct {
	Challenges *challenge.Service
	Enroll     *enroll.Service
	Auth       *nodeauth.Service
	Rotation   *rotation.Service
	Revocation *revocation.Service
	Sessions   *session.Registry
	ToolCalls  *toolcall.Service
	// Presence learns what each accepted envelope proved (key and token), for
	// fleet runs; nil means nobody listens.
	Presence *session.Presence
	// Throttle bounds concurrent rotations and attestations; nil admits all.
	Throttle          *throttle.Limiter
	LastSeen          *session.LastSeen
	Store             store.Store
	Metrics           *metrics.Metrics
	Now               func() time.Time
	Logger            *slog.Logger
	HeartbeatInterval time.Duration
	// ReplicaID names this process in session rows.
	ReplicaID string
	Rand      io.Reader
	// MaxMessageBytes is the read limit the handler is served with, named in the
	// refusal of a larger message; 0 leaves it out of the message.
	MaxMessageBytes int
	// KeyPolicy gives each stream's Welcome its policy max key age; nil: none.
	KeyPolicy *keypolicy.Service
	// Admission paces new streams (--stream-admission-rate); nil admits all.
	Admission *ratelimit.Admission
	// AdmissionRate is Admission's rate, used to size the shutdown spread; 0: none.
	AdmissionRate float64
	// ShutdownWindow caps the spread of reconnect hints on shutdown
	// (--shutdown-reconnect-window); 0 means DefaultShutdownWindow.
	ShutdownWindow time.Duration
	// RestartEstimate is how long, from the start of a shutdown closing streams
	// streams, the next process is expected to take to serve (the drain, then a
	// start as long as the server's own); the shutdown's hints begin after it.
	// nil: no wait beyond minReconnectAfter.
	RestartEstimate func(streams int) time.Duration
}

// DefaultShutdownWindow is --shutdown-reconnect-window's default: long enough for
// 10,000 daemons at hintShare of the default admission rate (10,000 / 240 = 42s),
// so that a default control plane has them all back within a minute of a restart.
const DefaultShutdownWindow = 45 * time.Second

// hintShare is the share of the admission rate the shutdown's hints aim at: the
// rest is headroom for the daemons that come back late or early (jitter, a slow
// handshake, a restart longer than expected), so the next start's schedule does not
// fall behind and refuse them busy.
const hintShare = 0.8

// minReconnectAfter is the earliest a daemon told to reconnect comes back: a restart
// takes at least that long, and a replica's peers need a moment to see it go.
const minReconnectAfter = time.Second

// Cluster implements edgev1connect.NodeClusterServiceHandler.
type Cluster struct{ cfg ClusterConfig }

// NewCluster returns the handler.
func NewCluster(cfg ClusterConfig) *Cluster { return &Cluster{cfg: cfg} }

func (c *Cluster) fail(ctx context.Context, op string, err error) error {
	return toConnect(ctx, c.cfg.Logger, c.cfg.Now(), op, err)
}

func peerHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// Challenge implements NodeClusterService.Challenge.
func (c *Cluster) Challenge(ctx context.Context, req *connect.Request[edgev1.ChallengeRequest]) (*connect.Response[edgev1.ChallengeResponse], error) {
	var purpose string
	switch req.Msg.GetPurpose() {
	case edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ENROLL:
		purpose = challenge.PurposeEnroll
	case edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ATTEST:
		purpose = challenge.PurposeAttest
	}
	n, err := c.cfg.Challenges.Issue(ctx, purpose, req.Msg.GetNodeId(), peerHost(req.Peer().Addr))
	if err != nil {
		return nil, c.fail(ctx, "Challenge", err)
	}
	return connect.NewResponse(&edgev1.ChallengeResponse{
		Nonce:      n.Value,
		ServerTime: timestamppb.New(c.cfg.Now()),
		ExpiresAt:  timestamppb.New(n.ExpiresAt),
	}), nil
}

// Enroll implements NodeClusterService.Enroll.
func (c *Cluster) Enroll(ctx context.Context, req *connect.Request[edgev1.EnrollRequest]) (*connect.Response[edgev1.EnrollResponse], error) {
	m := req.Msg
	res, err := c.cfg.Enroll.Enroll(ctx, enroll.Request{
		TokenID:     m.GetEnrollmentTokenId(),
		Secret:      m.GetEnrollmentSecret(),
		PublicKey:   m.GetPublicKey(),
		Nonce:       m.GetNonce(),
		Signature:   m.GetSignature(),
		DisplayName: m.GetDisplayName(),
		Hostname:    m.GetHostname(),
		OS:          m.GetOs(),
	})
	if err != nil {
		return nil, c.fail(ctx, "Enroll", err)
	}
	c.cfg.Logger.InfoContext(ctx, "enrolled", "node", res.Daemon.NodeID, "tenant", res.Tenant.ID, "name", res.Daemon.DisplayName)
	return connect.NewResponse(&edgev1.EnrollResponse{
		NodeId:            res.Daemon.NodeID,
		Tenant:            tenantPB(res.Tenant),
		Tags:              res.Daemon.Tags,
		NodeSecurityToken: res.Token.Token,
		TokenExpiresAt:    timestamppb.New(res.Token.Claims.Expires()),
		ServerTime:        timestamppb.New(c.cfg.Now()),
	}), nil
}

// Attest implements NodeClusterService.Attest.
func (c *Cluster) Attest(ctx context.Context, req *connect.Request[edgev1.AttestRequest]) (*connect.Response[edgev1.AttestResponse], error) {
	m := req.Msg
	release, err := c.cfg.Throttle.Acquire(ctx)
	if err != nil {
		return nil, c.fail(ctx, "Attest", err)
	}
	defer release()
	res, err := c.cfg.Auth.Attest(ctx, nodeauth.AttestRequest{
		NodeID:    m.GetNodeId(),
		PublicKey: m.GetPublicKey(),
		Nonce:     m.GetNonce(),
		Signature: m.GetSignature(),
	})
	if err != nil {
		return nil, c.fail(ctx, "Attest", err)
	}
	c.cfg.Logger.InfoContext(ctx, "attested", "node", res.Daemon.NodeID)
	return connect.NewResponse(&edgev1.AttestResponse{
		NodeSecurityToken: res.Token.Token,
		TokenExpiresAt:    timestamppb.New(res.Token.Claims.Expires()),
		ServerTime:        timestamppb.New(c.cfg.Now()),
		Tenant:            tenantPB(res.Tenant),
	}), nil
}

// NewClusterHandler mounts c as edgev1connect's NodeClusterService handler does,
// and gives each ConnectEdge stream a way to end its own Receive (bodyCloser): a
// kicked stream closes its request body, so it needs no goroutine parked on the
// kick channel while the daemon is silent. Serve c only through this.
func NewClusterHandler(c *Cluster, opts ...connect.HandlerOption) (string, http.Handler) {
	path, h := edgev1connect.NewNodeClusterServiceHandler(c, opts...)
	return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == edgev1connect.NodeClusterServiceConnectEdgeProcedure && r.Body != nil {
			body := r.Body
			r = r.WithContext(context.WithValue(r.Context(), bodyCloserKey{}, func() { _ = body.Close() }))
		}
		h.ServeHTTP(w, r)
	})
}

type bodyCloserKey struct{}

// bodyCloser is the stream's way to end its own Receive; a no-op when the handler
// was mounted without NewClusterHandler (a kicked daemon then ends the stream
// itself when it reads the Disconnect).
func bodyCloser(ctx context.Context) func() {
	if f, ok := ctx.Value(bodyCloserKey{}).(func()); ok {
		return f
	}
	return func() {}
}

// ConnectEdge implements NodeClusterService.ConnectEdge: Hello -> Welcome, then each
// Heartbeat -> HeartbeatAck, until the daemon hangs up, an envelope is refused (the
// stream ends with that refusal), or the server kicks the stream (Disconnect).
func (c *Cluster) ConnectEdge(ctx context.Context, bs *connect.BidiStream[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]) error {
	verifier := c.cfg.Auth.NewStream(edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT)

	first, err := bs.Receive()
	if err != nil {
		// The daemon left before saying anything, or said something unreadable.
		return c.receiveFailed(ctx, err)
	}
	// Admission comes before any verification, so a stream over the rate costs the
	// server no signature check: it is told its slot and comes back then.
	if ok, wait := c.cfg.Admission.Admit(first.GetNodeId(), c.cfg.Now()); !ok {
		c.cfg.Metrics.StreamAdmission("busy")
		return c.fail(ctx, "ConnectEdge", rejection.Retry(edgev1.RejectReason_REJECT_REASON_BUSY, wait,
			"the control plane is admitting streams at a bounded rate: come back in %s", wait.Round(time.Millisecond)))
	}
	c.cfg.Metrics.StreamAdmission("admitted")
	if err := verifier.Check(ctx, first); err != nil {
		return c.fail(ctx, "ConnectEdge", err)
	}
	var ev edgev1.EdgeEvent
	if err := proto.Unmarshal(first.GetPayload(), &ev); err != nil || ev.GetHello() == nil {
		return c.fail(ctx, "ConnectEdge", rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "the first envelope of a stream must carry a Hello"))
	}
	nodeID := verifier.NodeID()
	c.presented(verifier)
	sessionID, err := newSessionID(c.cfg.Rand)
	if err != nil {
		return c.fail(ctx, "ConnectEdge", err)
	}

	now := c.cfg.Now()
	h, err := c.cfg.Sessions.AttachSince(nodeID, sessionID, now)
	if errors.Is(err, session.ErrClosed) {
		return bs.Send(disconnect(session.Kick{Reason: session.ReasonShutdown, ReconnectAfter: c.lateShutdownHint(), Message: err.Error()}))
	}
	defer c.cfg.Sessions.Release(h)

	if err := c.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.OpenSession(ctx, nodeID, sessionID, c.cfg.ReplicaID, now); err != nil {
			return err
		}
		if err := tx.SetDaemonLocalMaxKeyAge(ctx, nodeID, localMaxKeyAge(ev.GetHello())); err != nil { // keypolicy_hook.go
			return err
		}
		return tx.TouchLastSeen(ctx, map[string]time.Time{nodeID: now})
	}); err != nil {
		return c.fail(ctx, "ConnectEdge", err)
	}
	c.cfg.LastSeen.Touch(nodeID, now)
	var st *edgeStream
	defer func() {
		if k := st.kickedBy(); k != nil && k.Reason == session.ReasonShutdown {
			// The server clears all its rows in one statement once its streams
			// are gone (CloseReplicaSessions): 10,000 writes here, one a stream,
			// would make the drain, and so the restart, seconds longer.
			return
		}
		// The request context is gone by now; the row must still be cleared.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := c.cfg.Store.CloseSession(cctx, nodeID, sessionID); err != nil {
			c.cfg.Logger.Warn("close session", "node", nodeID, "err", err)
		}
	}()
	log := c.cfg.Logger.With("node", nodeID, "session", sessionID)
	log.InfoContext(ctx, "stream open", "agent_version", ev.GetHello().GetAgentVersion(), "hostname", ev.GetHello().GetHostname())

	welcome := &edgev1.Welcome{
		SessionId:         sessionID,
		HeartbeatInterval: durationpb.New(c.cfg.HeartbeatInterval),
	}
	c.withPolicyMax(ctx, nodeID, welcome) // keypolicy_hook.go
	// The time as it is sent, not the arrival's: in a storm a stream may wait on the
	// session write longer than the allowed clock skew, and a daemon that learned a
	// clock behind by that wait would have its next envelopes refused clock_skew.
	welcome.ServerTime = timestamppb.New(c.cfg.Now())
	if err := bs.Send(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_Welcome{Welcome: welcome}}); err != nil {
		return nil
	}

	st = &edgeStream{c: c, bs: bs, h: h, log: log, nodeID: nodeID, closeBody: bodyCloser(ctx)}
	return st.serve(ctx, verifier)
}

// edgeStream is one admitted, welcomed ConnectEdge stream. Its handler goroutine
// only receives (and answers what it receives); kicks and commands queued by the
// rest of the control plane are sent by a goroutine started when one arrives, so an
// idle stream costs no goroutine of its own beyond the handler. Sends are serialized
// by out; once a Disconnect is sent nothing more is, and the request body is closed
// so the handler's Receive returns and the stream ends.
type edgeStream struct {
	c         *Cluster
	bs        *connect.BidiStream[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]
	h         *session.Handle
	log       *slog.Logger
	nodeID    string
	closeBody func()

	// mu serializes Sends; ended is set (under mu) once the stream's last message
	// went out or the handler is returning.
	mu    sync.Mutex
	ended bool
	// kicked is the Kick that ended the stream, if one did.
	kicked atomic.Pointer[session.Kick]
	// draining: a drain goroutine is running (at most one at a time).
	draining atomic.Bool
}

var errStreamEnded = errors.New("stream ended")

// kickedBy is the Kick that ended the stream, or nil (also for a nil stream: one
// that ended before it was welcomed).
func (s *edgeStream) kickedBy() *session.Kick {
	if s == nil {
		return nil
	}
	return s.kicked.Load()
}

// send sends cmd unless the stream has ended.
func (s *edgeStream) send(cmd *edgev1.EdgeCommand) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return errStreamEnded
	}
	return s.bs.Send(cmd)
}

// last sends cmd as the stream's final message.
func (s *edgeStream) last(cmd *edgev1.EdgeCommand) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return errStreamEnded
	}
	s.ended = true
	return s.bs.Send(cmd)
}

// end stops every later send; it waits for a send in progress.
func (s *edgeStream) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
}

// wake is called (by the registry, on the queuing goroutine) after a kick or command
// was queued for this stream.
func (s *edgeStream) wake() {
	if s.draining.CompareAndSwap(false, true) {
		go s.drain()
	}
}

// drain sends what is queued: commands in order, or a kick's Disconnect as the last
// message, after which the body is closed to end the handler's Receive.
func (s *edgeStream) drain() {
	for {
		select {
		case k := <-s.h.Kicked():
			s.kicked.Store(&k)
			err := s.last(disconnect(k))
			if err == nil && k.Reason == session.ReasonRevoked && !k.RevokedAt.IsZero() {
				// The Disconnect is on the wire and the stream ends now: the
				// revocation has reached the host.
				s.c.cfg.Metrics.RevocationPropagated(s.c.cfg.Now().Sub(k.RevokedAt))
			}
			s.closeBody()
			return // draining stays set: nothing more goes out on this stream
		case cmd := <-s.h.Commands():
			s.log.Info("command sent", "kind", cmd.Kind, "command_id", cmd.CommandID)
			if err := s.send(command(*cmd)); err != nil {
				s.end()
				s.closeBody()
				return
			}
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

// sendFailed ends the handler after a reply could not be sent: the daemon is gone,
// or a kick's Disconnect already ended the stream.
func (s *edgeStream) sendFailed(ctx context.Context) error {
	if k := s.kicked.Load(); k != nil {
		s.log.InfoContext(ctx, "stream closed", "why", "disconnect", "reason", k.Reason)
	}
	return nil
}

func (s *edgeStream) serve(ctx context.Context, verifier *nodeauth.Stream) error {
	c, log := s.c, s.log
	defer s.end()
	s.h.OnWork(s.wake)
	for {
		env, err := s.bs.Receive()
		if err != nil {
			if k := s.kicked.Load(); k != nil {
				log.InfoContext(ctx, "stream closed", "why", "disconnect", "reason", k.Reason)
				return nil
			}
			if rerr := c.receiveFailed(ctx, err); rerr != nil {
				return rerr
			}
			log.InfoContext(ctx, "stream closed", "why", "daemon hung up")
			return nil
		}
		if err := verifier.Check(ctx, env); err != nil {
			s.end()
			return c.fail(ctx, "ConnectEdge", err)
		}
		c.presented(verifier)
		var ev edgev1.EdgeEvent
		if err := proto.Unmarshal(env.GetPayload(), &ev); err != nil {
			s.end()
			return c.fail(ctx, "ConnectEdge", rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "payload is not an EdgeEvent"))
		}
		now := c.cfg.Now()
		c.cfg.LastSeen.Touch(s.nodeID, now)
		switch e := ev.GetEvent().(type) {
		case *edgev1.EdgeEvent_CommandProgress:
			p := e.CommandProgress
			c.cfg.ToolCalls.Progress(s.nodeID, p.GetCommandId(), progressFromPB(p))
		case *edgev1.EdgeEvent_CommandResult:
			res := e.CommandResult
			if !c.cfg.ToolCalls.Result(s.nodeID, res.GetCommandId(), resultFromPB(res)) {
				log.InfoContext(ctx, "tool result for no call followed here: acked, and kept a while for an attach", "command_id", res.GetCommandId())
			}
			// Acked as the answer to what was just received: a duplicate is acked
			// too, so the daemon's buffer drains either way.
			if err := s.send(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_CommandResultAck{CommandResultAck: &edgev1.CommandResultAck{
				CommandId: res.GetCommandId(),
			}}}); err != nil {
				return s.sendFailed(ctx)
			}
		case *edgev1.EdgeEvent_Heartbeat:
			c.cfg.Metrics.Heartbeat()
			if err := s.send(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_HeartbeatAck{HeartbeatAck: &edgev1.HeartbeatAck{
				Sequence:   env.GetSequence(),
				ServerTime: timestamppb.New(now),
			}}}); err != nil {
				return s.sendFailed(ctx)
			}
		default:
			// A second Hello or an event this server does not know yet: the
			// envelope was genuine, so it only refreshes last-seen.
		}
	}
}

// receiveFailed turns a failed Receive into how the stream ends: nil when the daemon
// hung up or went away (nobody is left to tell), a typed refusal when what it sent
// could not be read, so a client always learns why it was cut off.
func (c *Cluster) receiveFailed(ctx context.Context, err error) error {
	if errors.Is(err, io.EOF) || ctx.Err() != nil {
		return nil
	}
	switch connect.CodeOf(err) {
	case connect.CodeResourceExhausted:
		limit := ""
		if c.cfg.MaxMessageBytes > 0 {
			limit = fmt.Sprintf(" (%d bytes)", c.cfg.MaxMessageBytes)
		}
		return c.fail(ctx, "ConnectEdge", rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED,
			"a stream message was larger than the control plane reads%s; send smaller envelopes", limit))
	case connect.CodeInvalidArgument, connect.CodeInternal, connect.CodeUnknown:
		// connect-go reports a body it cannot decode as InvalidArgument (bad
		// protobuf) or Internal/Unknown (bad framing or compression).
		return c.fail(ctx, "ConnectEdge", rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED,
			"a stream message is not a SealNodeEnvelope; check the client speaks aegis.edge.v1"))
	}
	return nil
}

// presented tells Presence what the envelope the verifier just accepted proved.
func (c *Cluster) presented(v *nodeauth.Stream) {
	kfp, jti := v.Presented()
	c.cfg.Presence.Presented(v.NodeID(), session.Credentials{KeyFingerprint: kfp, TokenJTI: jti})
}

// ShutdownHints are the reconnect_after hints a shutdown sends: the i-th of n
// streams is told floor + span*i/n. The floor is minReconnectAfter plus the restart
// the server expects (RestartEstimate), so no daemon comes back while nothing
// listens; the span is just long enough for the next start to admit them all at
// hintShare of its admission rate (n / (0.8 * rate)), but no longer than the
// shutdown window. A small fleet is back about a second after the restart; 10,000
// daemons arrive below the pace they are admitted, each on its first attempt.
func (c *Cluster) ShutdownHints() func(i, n int) time.Duration {
	window := c.shutdownWindow()
	return func(i, n int) time.Duration {
		floor := c.hintFloor(n)
		if n <= 0 {
			return floor
		}
		span := window
		if c.cfg.AdmissionRate > 0 {
			// Rounded up, so that no second holds more than its share.
			need := time.Duration(math.Ceil(float64(n) / (hintShare * c.cfg.AdmissionRate) * float64(time.Second)))
			span = min(window, need)
		}
		return floor + time.Duration(int64(span)*int64(i)/int64(n))
	}
}

// lateShutdownHint is the hint for a stream that arrives while the server is already
// shutting down: after the floor, somewhere in the whole window, at random.
func (c *Cluster) lateShutdownHint() time.Duration {
	return c.hintFloor(c.cfg.Sessions.Len()) + mrand.N(c.shutdownWindow())
}

func (c *Cluster) shutdownWindow() time.Duration {
	if c.cfg.ShutdownWindow > 0 {
		return c.cfg.ShutdownWindow
	}
	return DefaultShutdownWindow
}

// hintFloor is the earliest hint of a shutdown closing n streams: minReconnectAfter
// past the expected restart.
func (c *Cluster) hintFloor(n int) time.Duration {
	floor := minReconnectAfter
	if c.cfg.RestartEstimate != nil {
		floor += max(c.cfg.RestartEstimate(n), 0)
	}
	return floor
}

func disconnect(k session.Kick) *edgev1.EdgeCommand {
	reason := edgev1.DisconnectReason_DISCONNECT_REASON_UNSPECIFIED
	switch k.Reason {
	case session.ReasonShutdown:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_SHUTDOWN
	case session.ReasonReplaced:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_REPLACED
	case session.ReasonRevoked:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED
	case session.ReasonReattest:
		reason = edgev1.DisconnectReason_DISCONNECT_REASON_REATTEST
	}
	d := &edgev1.Disconnect{Reason: reason, Message: k.Message}
	if k.ReconnectAfter > 0 {
		d.ReconnectAfter = durationpb.New(k.ReconnectAfter)
	}
	return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_Disconnect{Disconnect: d}}
}

func command(c session.Command) *edgev1.EdgeCommand {
	switch c.Kind {
	case session.CommandInvokeTool:
		return invokeToolPB(c)
	case session.CommandCancelTool:
		return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_CancelTool{CancelTool: &edgev1.CancelTool{CommandId: c.CommandID}}}
	case session.CommandQueryTool:
		return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_QueryTool{QueryTool: &edgev1.QueryTool{CommandId: c.CommandID}}}
	case session.CommandRotationPolicy:
		return rotationPolicyPB(c) // keypolicy_hook.go
	case session.CommandRotateKey:
		rk := &edgev1.RotateKeyCommand{FleetRunId: c.FleetRunID}
		if c.KeepOld > 0 {
			rk.KeepOld = durationpb.New(c.KeepOld)
		}
		return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_RotateKey{RotateKey: rk}}
	default:
		return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_RefreshToken{RefreshToken: &edgev1.RefreshTokenCommand{Reason: c.Reason}}}
	}
}

func newSessionID(rnd io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", err
	}
	return "s-" + hex.EncodeToString(b[:]), nil
}

func tenantPB(t store.Tenant) *edgev1.Tenant {
	return &edgev1.Tenant{Id: t.ID, Name: t.Name, Kind: t.Kind}
}

// RotateEdgeKey implements NodeClusterService.RotateEdgeKey.
func (c *Cluster) RotateEdgeKey(ctx context.Context, req *connect.Request[edgev1.SealNodeEnvelope]) (*connect.Response[edgev1.RotateEdgeKeyResponse], error) {
	env := req.Msg
	release, err := c.cfg.Throttle.Acquire(ctx)
	if err != nil {
		return nil, c.fail(ctx, "RotateEdgeKey", err)
	}
	defer release()
	var p edgev1.RotateEdgeKeyRequest
	perr := proto.Unmarshal(env.GetPayload(), &p)
	res, err := c.cfg.Rotation.Rotate(ctx, rotation.Request{
		Envelope:        env,
		PayloadErr:      perr,
		RotationID:      p.GetRotationId(),
		NodeID:          p.GetNodeId(),
		NewPublicKey:    p.GetNewPublicKey(),
		At:              time.UnixMilli(p.GetTimestampUnixMs()),
		NewKeySignature: p.GetNewKeySignature(),
		FleetRunID:      p.GetFleetRunId(),
	})
	if err != nil {
		return nil, c.fail(ctx, "RotateEdgeKey", err)
	}
	if res.Replayed {
		c.cfg.Logger.InfoContext(ctx, "key rotation replayed", "node", res.NodeID, "rotation_id", res.RotationID)
	} else {
		c.cfg.Logger.InfoContext(ctx, "key rotated", "node", res.NodeID, "rotation_id", res.RotationID, "old_key", res.OldFingerprint, "new_key", res.NewFingerprint)
	}
	return connect.NewResponse(&edgev1.RotateEdgeKeyResponse{
		RotationId:        res.RotationID,
		NodeSecurityToken: res.Token,
		TokenExpiresAt:    timestamppb.New(res.TokenExpires),
		OverlapUntil:      ts(res.OverlapUntil),
		NewKeyFingerprint: res.NewFingerprint,
		ServerTime:        timestamppb.New(c.cfg.Now()),
		RotatedAt:         timestamppb.New(res.RotatedAt),
	}), nil
}

// Logout implements NodeClusterService.Logout.
func (c *Cluster) Logout(ctx context.Context, req *connect.Request[edgev1.SealNodeEnvelope]) (*connect.Response[edgev1.LogoutResponse], error) {
	env := req.Msg
	var p edgev1.LogoutRequest
	perr := proto.Unmarshal(env.GetPayload(), &p)
	res, err := c.cfg.Revocation.Logout(ctx, revocation.LogoutRequest{Envelope: env, PayloadErr: perr, NodeID: p.GetNodeId()})
	if err != nil {
		return nil, c.fail(ctx, "Logout", err)
	}
	c.cfg.Logger.InfoContext(ctx, "node logged out", "node", res.Daemon.NodeID, "blacklisted_tokens", res.Blacklisted, "stream_dropped", res.StreamDropped)
	return connect.NewResponse(&edgev1.LogoutResponse{}), nil
}
