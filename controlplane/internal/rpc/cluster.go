package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
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
type Cluster struct {
	cfg ClusterConfig

	// stream is what every ConnectEdge stream's session is wired with.
	stream *session.StreamConfig
}

// NewCluster returns the handler.
func NewCluster(cfg ClusterConfig) *Cluster {
	c := &Cluster{cfg: cfg}
	c.stream = c.streamConfig()
	return c
}

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

// ConnectEdge implements NodeClusterService.ConnectEdge: the stream is a
// session.Stream (admit, authenticate, open, welcome, serve, close); this maps the
// error it ends with, once.
func (c *Cluster) ConnectEdge(ctx context.Context, bs *connect.BidiStream[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]) error {
	verifier := c.cfg.Auth.NewStream(edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT)
	if err := session.NewStream(c.stream, bs, verifier, bodyCloser(ctx)).Run(ctx); err != nil {
		return c.fail(ctx, "ConnectEdge", err)
	}
	return nil
}

// streamConfig wires a stream's session to this cluster's services.
func (c *Cluster) streamConfig() *session.StreamConfig {
	return &session.StreamConfig{
		Registry:          c.cfg.Sessions,
		Presence:          c.cfg.Presence,
		LastSeen:          c.cfg.LastSeen,
		Store:             c.cfg.Store,
		Metrics:           c.cfg.Metrics,
		Admission:         c.cfg.Admission,
		Tools:             toolSink{c.cfg.ToolCalls},
		Now:               c.cfg.Now,
		Logger:            c.cfg.Logger,
		HeartbeatInterval: c.cfg.HeartbeatInterval,
		ReplicaID:         c.cfg.ReplicaID,
		Rand:              c.cfg.Rand,
		PolicyMax:         c.policyMax,    // keypolicy_hook.go
		LocalMaxKeyAge:    localMaxKeyAge, // keypolicy_hook.go
		LateShutdownHint:  c.lateShutdownHint,
		ReceiveError:      c.receiveFailed,
		Encode:            command,
	}
}

// toolSink hands a stream's tool-call reports to the tool-call service.
type toolSink struct{ s *toolcall.Service }

func (t toolSink) Progress(nodeID string, p *edgev1.CommandProgress) {
	t.s.Progress(nodeID, p.GetCommandId(), progressFromPB(p))
}

func (t toolSink) Result(nodeID string, r *edgev1.CommandResult) bool {
	return t.s.Result(nodeID, r.GetCommandId(), resultFromPB(r))
}

// receiveFailed turns a failed Receive into how the stream ends: nil when the daemon
// hung up or went away (nobody is left to tell), a typed refusal (mapped by
// ConnectEdge) when what it sent could not be read, so a client always learns why it
// was cut off.
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
		return rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED,
			"a stream message was larger than the control plane reads%s; send smaller envelopes", limit)
	case connect.CodeInvalidArgument, connect.CodeInternal, connect.CodeUnknown:
		// connect-go reports a body it cannot decode as InvalidArgument (bad
		// protobuf) or Internal/Unknown (bad framing or compression).
		return rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED,
			"a stream message is not a SealNodeEnvelope; check the client speaks aegis.edge.v1")
	}
	return nil
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
