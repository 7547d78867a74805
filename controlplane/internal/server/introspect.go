package server

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// healthChecker answers grpc.health.v1 as /readyz does: SERVING while this replica
// serves and its database answers. Like /healthz it needs no token (load balancers
// and kubelet gRPC probes carry none) and tells nothing beyond up or down.
type healthChecker struct{ s *Server }

func (h healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	switch req.Service {
	case "", edgev1connect.NodeClusterServiceName, edgev1connect.EdgeAdminServiceName:
	default:
		return nil, connect.NewError(connect.CodeNotFound, errors.New("unknown service: ask for \"\", "+edgev1connect.NodeClusterServiceName+" or "+edgev1connect.EdgeAdminServiceName))
	}
	if !h.s.ready.Load() || h.s.store.Ping(ctx) != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}

// adminOnly admits a call only with an admin API token: server reflection lists the
// whole API, which is for operators with grpcurl, not for anyone who can connect.
type adminOnly struct{ store store.Store }

func (a adminOnly) check(ctx context.Context, h http.Header) error {
	tok, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return connect.NewError(connect.CodeUnauthenticated, errors.New(`server reflection takes an admin token (grpcurl -H "Authorization: Bearer $(cat admin.token)" ADDR list)`))
	}
	p, err := apitoken.Authenticate(ctx, a.store, tok)
	if errors.Is(err, apitoken.ErrUnauthenticated) {
		return connect.NewError(connect.CodeUnauthenticated, err)
	}
	if err != nil {
		return connect.NewError(connect.CodeUnavailable, errors.New("cannot check the API token right now: retry"))
	}
	if !p.IsAdmin() {
		return connect.NewError(connect.CodePermissionDenied, errors.New("server reflection takes an admin token"))
	}
	return nil
}

func (a adminOnly) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := a.check(ctx, req.Header()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a adminOnly) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a adminOnly) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := a.check(ctx, conn.RequestHeader()); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// mountIntrospection adds grpc.health.v1 and gRPC server reflection (v1 and
// v1alpha, which grpcurl still asks for) to mux, so grpcurl works without .proto files.
func (s *Server) mountIntrospection(mux *http.ServeMux) {
	mux.Handle(grpchealth.NewHandler(healthChecker{s}))
	reflector := grpcreflect.NewStaticReflector(
		edgev1connect.NodeClusterServiceName,
		edgev1connect.EdgeAdminServiceName,
		grpchealth.HealthV1ServiceName,
	)
	auth := connect.WithInterceptors(adminOnly{store: s.store})
	mux.Handle(grpcreflect.NewHandlerV1(reflector, auth))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, auth))
}
