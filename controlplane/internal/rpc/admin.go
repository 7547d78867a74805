package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/enroll"
	"github.com/aegis-edge/aegis/controlplane/internal/fleet"
	"github.com/aegis-edge/aegis/controlplane/internal/hosts"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/operators"
	"github.com/aegis-edge/aegis/controlplane/internal/revocation"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// AdminConfig wires the EdgeAdminService handler.
type AdminConfig struct {
	Enroll     *enroll.Service
	Hosts      *hosts.Service
	Revocation *revocation.Service
	ToolCalls  *toolcall.Service
	Operators  *operators.Service
	Fleet      *fleet.Engine
	KeyPolicy  *keypolicy.Service
	Store      store.Tx
	Now        func() time.Time
	Logger     *slog.Logger
}

// Admin implements edgev1connect.EdgeAdminServiceHandler. It must be mounted behind
// AuthInterceptor.
type Admin struct{ cfg AdminConfig }

// NewAdmin returns the handler.
func NewAdmin(cfg AdminConfig) *Admin { return &Admin{cfg: cfg} }

func (a *Admin) principal(ctx context.Context) (apitoken.Principal, error) {
	p, ok := PrincipalFrom(ctx)
	if !ok {
		// Only reachable if the handler was mounted without the interceptor.
		return apitoken.Principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("no authenticated operator"))
	}
	return p, nil
}

func (a *Admin) fail(ctx context.Context, op string, err error) error {
	return toConnect(ctx, a.cfg.Logger, a.cfg.Now(), op, err)
}

// WhoAmI implements EdgeAdminService.WhoAmI.
func (a *Admin) WhoAmI(ctx context.Context, _ *connect.Request[edgev1.WhoAmIRequest]) (*connect.Response[edgev1.WhoAmIResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := a.cfg.Store.GetTenant(ctx, p.TenantID)
	if err != nil {
		return nil, a.fail(ctx, "WhoAmI", err)
	}
	return connect.NewResponse(&edgev1.WhoAmIResponse{
		TokenId:    p.TokenID,
		Role:       p.Role,
		Tenant:     tenantPB(t),
		ServerTime: timestamppb.New(a.cfg.Now()),
	}), nil
}

// CreateEnrollmentToken implements EdgeAdminService.CreateEnrollmentToken.
func (a *Admin) CreateEnrollmentToken(ctx context.Context, req *connect.Request[edgev1.CreateEnrollmentTokenRequest]) (*connect.Response[edgev1.CreateEnrollmentTokenResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	var ttl time.Duration
	if req.Msg.GetTtl() != nil {
		if err := req.Msg.GetTtl().CheckValid(); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("ttl is not a valid duration"))
		}
		ttl = req.Msg.GetTtl().AsDuration()
		if ttl <= 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("ttl must be positive"))
		}
	}
	text, rec, err := a.cfg.Enroll.CreateToken(ctx, p, enroll.CreateTokenRequest{
		TenantID: req.Msg.GetTenantId(),
		Name:     req.Msg.GetName(),
		Tags:     req.Msg.GetTags(),
		TTL:      ttl,
	})
	if err != nil {
		return nil, a.fail(ctx, "CreateEnrollmentToken", err)
	}
	a.cfg.Logger.InfoContext(ctx, "enrollment token created", "operator", p.TokenID, "enrollment_token", rec.ID, "tenant", rec.TenantID, "expires", rec.ExpiresAt)
	return connect.NewResponse(&edgev1.CreateEnrollmentTokenResponse{
		Token:           text,
		EnrollmentToken: enrollmentTokenPB(rec, a.cfg.Now()),
	}), nil
}

// ListEnrollmentTokens implements EdgeAdminService.ListEnrollmentTokens.
func (a *Admin) ListEnrollmentTokens(ctx context.Context, _ *connect.Request[edgev1.ListEnrollmentTokensRequest]) (*connect.Response[edgev1.ListEnrollmentTokensResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	list, err := a.cfg.Enroll.ListTokens(ctx, p)
	if err != nil {
		return nil, a.fail(ctx, "ListEnrollmentTokens", err)
	}
	now := a.cfg.Now()
	out := &edgev1.ListEnrollmentTokensResponse{}
	for _, t := range list {
		out.EnrollmentTokens = append(out.EnrollmentTokens, enrollmentTokenPB(t, now))
	}
	return connect.NewResponse(out), nil
}

// RevokeEnrollmentToken implements EdgeAdminService.RevokeEnrollmentToken.
func (a *Admin) RevokeEnrollmentToken(ctx context.Context, req *connect.Request[edgev1.RevokeEnrollmentTokenRequest]) (*connect.Response[edgev1.RevokeEnrollmentTokenResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := a.cfg.Enroll.RevokeToken(ctx, p, req.Msg.GetId()); err != nil {
		return nil, a.fail(ctx, "RevokeEnrollmentToken", err)
	}
	a.cfg.Logger.InfoContext(ctx, "enrollment token revoked", "operator", p.TokenID, "enrollment_token", req.Msg.GetId())
	return connect.NewResponse(&edgev1.RevokeEnrollmentTokenResponse{}), nil
}

// ListHosts implements EdgeAdminService.ListHosts.
func (a *Admin) ListHosts(ctx context.Context, req *connect.Request[edgev1.ListHostsRequest]) (*connect.Response[edgev1.ListHostsResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	var pg hosts.Page
	if m.GetPageSize() == 0 && m.GetPageToken() == "" {
		// Clients from before paging: every host at once.
		var list []hosts.Host
		if list, err = a.cfg.Hosts.List(ctx, p, m.GetTarget()); err == nil {
			pg = hosts.WholePage(list)
		}
	} else {
		size := int(m.GetPageSize())
		if size <= 0 || size > hosts.MaxPageSize {
			size = hosts.MaxPageSize
		}
		pg, err = a.cfg.Hosts.ListPage(ctx, p, m.GetTarget(), size, m.GetPageToken())
	}
	if err != nil {
		return nil, a.fail(ctx, "ListHosts", err)
	}
	out := &edgev1.ListHostsResponse{
		NextPageToken: pg.Next,
		TotalCount:    int32(pg.Counts.Total),
		Counts: &edgev1.HostStatusCounts{
			Connected:    int32(pg.Counts.Connected),
			Disconnected: int32(pg.Counts.Disconnected),
			Revoked:      int32(pg.Counts.Revoked),
		},
	}
	for _, h := range pg.Hosts {
		out.Hosts = append(out.Hosts, hostPB(h))
	}
	return connect.NewResponse(out), nil
}

// GetHost implements EdgeAdminService.GetHost.
func (a *Admin) GetHost(ctx context.Context, req *connect.Request[edgev1.GetHostRequest]) (*connect.Response[edgev1.GetHostResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	h, err := a.cfg.Hosts.Get(ctx, p, req.Msg.GetNodeId())
	if err != nil {
		return nil, a.fail(ctx, "GetHost", err)
	}
	return connect.NewResponse(&edgev1.GetHostResponse{Host: hostPB(h)}), nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func enrollmentTokenPB(t store.EnrollmentToken, now time.Time) *edgev1.EnrollmentToken {
	return &edgev1.EnrollmentToken{
		Id:        t.ID,
		Name:      t.Name,
		TenantId:  t.TenantID,
		Tags:      t.Tags,
		CreatedAt: ts(t.CreatedAt),
		ExpiresAt: ts(t.ExpiresAt),
		UsedAt:    ts(t.UsedAt),
		UsedBy:    t.UsedBy,
		RevokedAt: ts(t.RevokedAt),
		State:     enroll.State(t, now),
	}
}

func hostPB(h hosts.Host) *edgev1.Host {
	status := edgev1.HostStatus_HOST_STATUS_DISCONNECTED
	switch h.Status {
	case hosts.StatusConnected:
		status = edgev1.HostStatus_HOST_STATUS_CONNECTED
	case hosts.StatusRevoked:
		status = edgev1.HostStatus_HOST_STATUS_REVOKED
	}
	d := h.Daemon
	return &edgev1.Host{
		NodeId:          d.NodeID,
		Name:            d.DisplayName,
		Tenant:          tenantPB(h.Tenant),
		Status:          status,
		Tags:            d.Tags,
		KeyFingerprint:  fingerprint.Of(d.PublicKey),
		KeyRotatedAt:    ts(d.KeyRotatedAt),
		LastSeenAt:      ts(h.LastSeen),
		EnrolledAt:      ts(d.EnrolledAt),
		Hostname:        d.Hostname,
		Os:              d.OS,
		SecurityContext: d.SecurityContext,
		TokenExpiresAt:  ts(h.TokenExpiresAt),
		KeyAge:          durationpb.New(h.Key.Age),
		KeyDueAt:        ts(h.Key.DueAt),
		Overdue:         h.Key.Overdue,
	}
}

// RevokeHost implements EdgeAdminService.RevokeHost (revoke-remote).
func (a *Admin) RevokeHost(ctx context.Context, req *connect.Request[edgev1.RevokeHostRequest]) (*connect.Response[edgev1.RevokeHostResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	res, err := a.cfg.Revocation.Revoke(ctx, p, req.Msg.GetNodeId())
	if err != nil {
		return nil, a.fail(ctx, "RevokeHost", err)
	}
	a.cfg.Logger.InfoContext(ctx, "host revoked", "operator", p.TokenID, "node", res.Daemon.NodeID, "blacklisted_tokens", res.Blacklisted, "stream_dropped", res.StreamDropped)
	h, err := a.cfg.Hosts.Get(ctx, p, res.Daemon.NodeID)
	if err != nil {
		return nil, a.fail(ctx, "RevokeHost", err)
	}
	return connect.NewResponse(&edgev1.RevokeHostResponse{
		Host:              hostPB(h),
		BlacklistedTokens: int32(res.Blacklisted),
		StreamDropped:     res.StreamDropped,
	}), nil
}

// SetHostSecurityContext implements EdgeAdminService.SetHostSecurityContext.
func (a *Admin) SetHostSecurityContext(ctx context.Context, req *connect.Request[edgev1.SetHostSecurityContextRequest]) (*connect.Response[edgev1.SetHostSecurityContextResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	h, sent, err := a.cfg.Hosts.SetSecurityContext(ctx, p, m.GetNodeId(), m.GetSecurityContext(), m.GetRefreshNow())
	if err != nil {
		return nil, a.fail(ctx, "SetHostSecurityContext", err)
	}
	a.cfg.Logger.InfoContext(ctx, "security context set", "operator", p.TokenID, "node", h.Daemon.NodeID,
		"security_context", h.Daemon.SecurityContext, "version", h.Daemon.SecurityContextVersion, "refresh_sent", sent)
	return connect.NewResponse(&edgev1.SetHostSecurityContextResponse{Host: hostPB(h), RefreshSent: sent}), nil
}

// Exec implements EdgeAdminService.Exec: started, the output in order, one result.
// A host that cannot be reached answers with a result of kind EDGE_DISCONNECTED, not
// an RPC error, so the CLI reports every outcome of the command the same way. When
// the caller goes away the daemon is told to cancel; its result is still recorded.
func (a *Admin) Exec(ctx context.Context, req *connect.Request[edgev1.ExecRequest], stream *connect.ServerStream[edgev1.ExecResponse]) error {
	p, err := a.principal(ctx)
	if err != nil {
		return err
	}
	m := req.Msg
	var deadline time.Duration
	if m.GetDeadline() != nil {
		if err := m.GetDeadline().CheckValid(); err != nil {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("deadline is not a valid duration"))
		}
		if deadline = m.GetDeadline().AsDuration(); deadline <= 0 {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("deadline must be positive"))
		}
	}
	call, err := a.cfg.ToolCalls.Start(ctx, p, toolcall.Request{
		NodeID: m.GetNodeId(), Command: m.GetCommand(), Args: m.GetArgs(), Cwd: m.GetCwd(), Deadline: deadline,
	})
	if err != nil {
		return a.fail(ctx, "Exec", err)
	}
	a.cfg.Logger.InfoContext(ctx, "exec", "operator", p.TokenID, "node", call.NodeID, "command_id", call.ID, "command", call.Command)
	if err := stream.Send(&edgev1.ExecResponse{Event: &edgev1.ExecResponse_Started{Started: &edgev1.ExecStarted{
		CommandId: call.ID, NodeId: call.NodeID, SecurityContext: call.SecurityContext,
	}}}); err != nil {
		call.Cancel()
		return nil
	}
	for {
		ev, err := call.Next(ctx)
		if err != nil {
			// The caller left (Ctrl-C, a dropped connection): stop the command too.
			call.Cancel()
			return a.fail(ctx, "Exec", err)
		}
		if ev.Result != nil {
			if ev.Result.Kind == toolcall.KindShutdown {
				return shutdownError(call)
			}
			return stream.Send(&edgev1.ExecResponse{Event: &edgev1.ExecResponse_Result{Result: resultPB(call.ID, *ev.Result)}})
		}
		if err := stream.Send(&edgev1.ExecResponse{Event: &edgev1.ExecResponse_Output{Output: progressPB(call.ID, *ev.Progress)}}); err != nil {
			call.Cancel()
			return nil
		}
	}
}

// shutdownError ends an Exec or AttachExec whose control plane is stopping: the
// command goes on on the host, and the caller attaches again (aegis does it itself).
func shutdownError(call *toolcall.Call) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf(
		"the control plane is shutting down; command %s goes on on %s: attach again (aegis edge exec --attach %s %s)",
		call.ID, call.NodeID, call.ID, call.NodeID))
}

// AttachExec implements EdgeAdminService.AttachExec: it follows a call whose Exec
// ended before its result. Leaving it does not cancel the command.
func (a *Admin) AttachExec(ctx context.Context, req *connect.Request[edgev1.AttachExecRequest], stream *connect.ServerStream[edgev1.AttachExecResponse]) error {
	p, err := a.principal(ctx)
	if err != nil {
		return err
	}
	m := req.Msg
	var wait time.Duration
	if m.GetWait() != nil {
		if err := m.GetWait().CheckValid(); err != nil || m.GetWait().AsDuration() <= 0 {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("wait must be a positive duration"))
		}
		wait = m.GetWait().AsDuration()
	}
	call, err := a.cfg.ToolCalls.Attach(ctx, p, m.GetNodeId(), m.GetCommandId(), wait)
	if err != nil {
		return a.fail(ctx, "AttachExec", err)
	}
	a.cfg.Logger.InfoContext(ctx, "exec attached", "operator", p.TokenID, "node", call.NodeID, "command_id", call.ID)
	for {
		ev, err := call.Next(ctx)
		if err != nil {
			// The caller left: the command goes on, and a later attach still finds
			// what arrives meanwhile.
			call.Release()
			return a.fail(ctx, "AttachExec", err)
		}
		if ev.Result != nil {
			if ev.Result.Kind == toolcall.KindShutdown {
				return shutdownError(call)
			}
			return stream.Send(&edgev1.AttachExecResponse{Event: &edgev1.AttachExecResponse_Result{Result: resultPB(call.ID, *ev.Result)}})
		}
		if err := stream.Send(&edgev1.AttachExecResponse{Event: &edgev1.AttachExecResponse_Output{Output: progressPB(call.ID, *ev.Progress)}}); err != nil {
			call.Release()
			return nil
		}
	}
}
