package rpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

type principalKey struct{}

// PrincipalFrom returns the authenticated operator of an admin call.
func PrincipalFrom(ctx context.Context) (apitoken.Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(apitoken.Principal)
	return p, ok
}

// AuthInterceptor resolves "Authorization: Bearer <api token>" on every admin call,
// unary and streaming, and refuses the call before the handler runs when it is
// missing or invalid, or when the token's role is below what AdminPermissions asks
// for the procedure. A procedure missing from the table is refused: a new RPC is
// closed until someone decides who may call it.
type AuthInterceptor struct {
	Store store.Tx
}

// Access is the least role an admin procedure needs.
type Access int

const (
	// Read: viewers, operators and admins (tenant-scoped except for admins).
	Read Access = iota + 1
	// Write: operators and admins.
	Write
	// AdminOnly: admins (across tenants).
	AdminOnly
)

// AdminPermissions is the one place that says who may call which admin procedure.
// Tenant scoping is the domain's job (an object of another tenant is NotFound);
// this table decides the role.
var AdminPermissions = map[string]Access{
	edgev1connect.EdgeAdminServiceWhoAmIProcedure:                 Read,
	edgev1connect.EdgeAdminServiceListHostsProcedure:              Read,
	edgev1connect.EdgeAdminServiceGetHostProcedure:                Read,
	edgev1connect.EdgeAdminServiceListEnrollmentTokensProcedure:   Read,
	edgev1connect.EdgeAdminServiceCreateEnrollmentTokenProcedure:  Write,
	edgev1connect.EdgeAdminServiceRevokeEnrollmentTokenProcedure:  Write,
	edgev1connect.EdgeAdminServiceRevokeHostProcedure:             Write,
	edgev1connect.EdgeAdminServiceSetHostSecurityContextProcedure: Write,
	edgev1connect.EdgeAdminServiceExecProcedure:                   Write,
	edgev1connect.EdgeAdminServiceAttachExecProcedure:             Write,
	edgev1connect.EdgeAdminServiceUpdateHostTagsProcedure:         Write,
	edgev1connect.EdgeAdminServiceDeleteHostProcedure:             Write,
	edgev1connect.EdgeAdminServicePlanFleetRunProcedure:           Read,
	edgev1connect.EdgeAdminServiceStartFleetRunProcedure:          Write,
	edgev1connect.EdgeAdminServiceWatchFleetRunProcedure:          Read,
	edgev1connect.EdgeAdminServiceCancelFleetRunProcedure:         Write,
	edgev1connect.EdgeAdminServiceListFleetRunsProcedure:          Read,
	edgev1connect.EdgeAdminServiceGetFleetRunProcedure:            Read,
	edgev1connect.EdgeAdminServiceListAPITokensProcedure:          Read,
	edgev1connect.EdgeAdminServiceCreateAPITokenProcedure:         AdminOnly,
	edgev1connect.EdgeAdminServiceRevokeAPITokenProcedure:         AdminOnly,
	edgev1connect.EdgeAdminServiceCreateTenantProcedure:           AdminOnly,
	edgev1connect.EdgeAdminServiceListTenantsProcedure:            AdminOnly,
	edgev1connect.EdgeAdminServiceListAuditProcedure:              Read,
	edgev1connect.EdgeAdminServiceVerifyAuditProcedure:            AdminOnly,
	edgev1connect.EdgeAdminServiceSetRotationPolicyProcedure:      Write,
	edgev1connect.EdgeAdminServiceListRotationPoliciesProcedure:   Read,
	edgev1connect.EdgeAdminServiceDeleteRotationPolicyProcedure:   Write,
}

func allowed(p apitoken.Principal, need Access) bool {
	switch need {
	case Read:
		return p.Role == store.RoleViewer || p.CanWrite()
	case Write:
		return p.CanWrite()
	case AdminOnly:
		return p.IsAdmin()
	}
	return false
}

func (a AuthInterceptor) authorize(ctx context.Context, procedure, header string) (context.Context, error) {
	ctx, err := a.authenticate(ctx, header)
	if err != nil {
		return nil, err
	}
	p, _ := PrincipalFrom(ctx)
	need, known := AdminPermissions[procedure]
	if !known || !allowed(p, need) {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%w: %s API token may not call %s (%s)", apitoken.ErrPermissionDenied,
			withArticle(p.Role), procedure[strings.LastIndex(procedure, "/")+1:], need))
	}
	return ctx, nil
}

// String says who may call a procedure that needs this access.
func (need Access) String() string {
	switch need {
	case Read:
		return "it takes a viewer, operator or admin token"
	case Write:
		return "it takes an operator or admin token"
	case AdminOnly:
		return "it takes an admin token"
	}
	return "no token may call it"
}

func withArticle(role string) string {
	if strings.IndexAny(role, "aeiou") == 0 {
		return "an " + role
	}
	return "a " + role
}

func (a AuthInterceptor) authenticate(ctx context.Context, header string) (context.Context, error) {
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || tok == "" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("missing \"Authorization: Bearer <api token>\": run aegisctl login"))
	}
	p, err := apitoken.Authenticate(ctx, a.Store, tok)
	if errors.Is(err, apitoken.ErrUnauthenticated) {
		return nil, connect.NewError(connect.CodeUnauthenticated, err)
	}
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("cannot check the API token right now: retry"))
	}
	return context.WithValue(ctx, principalKey{}, p), nil
}

// WrapUnary implements connect.Interceptor.
func (a AuthInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		ctx, err := a.authorize(ctx, req.Spec().Procedure, req.Header().Get("Authorization"))
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor (no-op on the server).
func (a AuthInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (a AuthInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := a.authorize(ctx, conn.Spec().Procedure, conn.RequestHeader().Get("Authorization"))
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// MetricsInterceptor counts every finished RPC by procedure and code, and times it
// (aegis_rpc_duration_seconds{procedure}).
type MetricsInterceptor struct {
	Metrics *metrics.Metrics
}

func codeLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

// WrapUnary implements connect.Interceptor.
func (m MetricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		resp, err := next(ctx, req)
		if !req.Spec().IsClient {
			m.Metrics.RPC(req.Spec().Procedure, codeLabel(err))
			m.Metrics.RPCDuration(req.Spec().Procedure, time.Since(start))
		}
		return resp, err
	}
}

// WrapStreamingClient implements connect.Interceptor (no-op on the server).
func (m MetricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (m MetricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		m.Metrics.RPC(conn.Spec().Procedure, codeLabel(err))
		m.Metrics.RPCDuration(conn.Spec().Procedure, time.Since(start))
		return err
	}
}
