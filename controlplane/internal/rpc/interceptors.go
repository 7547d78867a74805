package rpc

import (
	"context"
	"errors"
	"strings"

	"connectrpc.com/connect"
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
// missing or invalid.
type AuthInterceptor struct {
	Store store.Tx
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
		ctx, err := a.authenticate(ctx, req.Header().Get("Authorization"))
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
		ctx, err := a.authenticate(ctx, conn.RequestHeader().Get("Authorization"))
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// MetricsInterceptor counts every finished RPC by procedure and code.
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
		resp, err := next(ctx, req)
		if !req.Spec().IsClient {
			m.Metrics.RPC(req.Spec().Procedure, codeLabel(err))
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
		err := next(ctx, conn)
		m.Metrics.RPC(conn.Spec().Procedure, codeLabel(err))
		return err
	}
}
