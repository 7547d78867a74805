package rpc

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
)

// Unreadable wraps a Connect service handler so that a request connect-go refuses
// before any handler code runs (a body that does not decode, one larger than the
// read limit, a content type it has no codec for) ends with a typed refusal, a
// Rejection{MALFORMED} saying which, in the request's own protocol. connect-go
// answers those with a bare code (or a bare HTTP 415) that a daemon cannot act on.
//
// The handler must carry ReadInterceptor first among its interceptors: a request
// that reached it was read, and its answer passes through untouched; the stream's
// own refusals (cluster.go receiveFailed) cover messages after the first.
func Unreadable(next http.Handler, now func() time.Time, maxBytes int) http.Handler {
	errw := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached := new(atomic.Bool)
		rw := &refusalWriter{w: w, reached: reached}
		next.ServeHTTP(rw, r.WithContext(context.WithValue(r.Context(), reachedKey{}, reached)))
		if !rw.held {
			return
		}
		msg, ok := unreadableMessage(r, rw.status, w.Header(), maxBytes)
		if !ok {
			rw.replay()
			return
		}
		clear(w.Header())
		_ = errw.Write(w, r, reject.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, msg, now()))
	})
}

// unreadableMessage says why connect-go refused the request, from the answer it
// wrote: its status (Connect unary, and the 415 of both protocols) or its gRPC status.
func unreadableMessage(r *http.Request, status int, h http.Header, maxBytes int) (string, bool) {
	grpcStatus := h.Get("Grpc-Status")
	if grpcStatus == "" {
		grpcStatus = h.Get(http.TrailerPrefix + "Grpc-Status")
	}
	switch {
	case status == http.StatusUnsupportedMediaType:
		ct := r.Header.Get("Content-Type")
		if len(ct) > 64 {
			ct = ct[:64] + "..."
		}
		return fmt.Sprintf("content type %q has no codec here; send application/proto or application/json (Connect), application/grpc or application/grpc+json (gRPC)", ct), true
	case status == http.StatusTooManyRequests || grpcStatus == "8": // resource_exhausted
		return fmt.Sprintf("the request body is larger than the control plane reads (%d bytes); send a smaller request", maxBytes), true
	case status == http.StatusMethodNotAllowed || status == http.StatusHTTPVersionNotSupported:
		// Not a request for an RPC at all (a GET on a POST-only procedure, a stream over
		// HTTP/1.1): connect-go's answer says so in HTTP terms.
		return "", false
	case status >= 400 || (grpcStatus != "" && grpcStatus != "0"):
		return fmt.Sprintf("the request body cannot be read as the request of %s (not a protobuf of that message, or bad framing or compression); check the client speaks aegis.edge.v1", r.URL.Path), true
	}
	return "", false
}

type reachedKey struct{}

// ReadInterceptor marks a request as read (its message decoded, or its stream
// opened), so Unreadable leaves its answer alone. It must be the first interceptor.
type ReadInterceptor struct{}

func markReached(ctx context.Context) {
	if b, ok := ctx.Value(reachedKey{}).(*atomic.Bool); ok {
		b.Store(true)
	}
}

// WrapUnary implements connect.Interceptor.
func (ReadInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		markReached(ctx)
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (ReadInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (ReadInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		markReached(ctx)
		return next(ctx, conn)
	}
}

// refusalWriter passes a read request's answer straight through; the answer to a
// request that never reached the handler is held (it is a few bytes of error) until
// Unreadable has decided what to say instead.
type refusalWriter struct {
	w       http.ResponseWriter
	reached *atomic.Bool
	decided bool
	held    bool
	status  int
	body    bytes.Buffer
}

const heldBodyMax = 64 << 10

func (rw *refusalWriter) decide() {
	if !rw.decided {
		rw.decided = true
		rw.held = !rw.reached.Load()
	}
}

func (rw *refusalWriter) Header() http.Header { return rw.w.Header() }

func (rw *refusalWriter) WriteHeader(code int) {
	rw.decide()
	if !rw.held {
		rw.w.WriteHeader(code)
		return
	}
	if rw.status == 0 {
		rw.status = code
	}
}

func (rw *refusalWriter) Write(p []byte) (int, error) {
	rw.decide()
	if !rw.held {
		return rw.w.Write(p)
	}
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	if rw.body.Len()+len(p) <= heldBodyMax {
		rw.body.Write(p)
	}
	return len(p), nil
}

func (rw *refusalWriter) Flush() {
	rw.decide()
	if rw.held {
		if rw.status == 0 {
			rw.status = http.StatusOK
		}
		return
	}
	if f, ok := rw.w.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (rw *refusalWriter) Unwrap() http.ResponseWriter { return rw.w }

// replay writes a held answer Unreadable had nothing to add to.
func (rw *refusalWriter) replay() {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	rw.w.WriteHeader(rw.status)
	if rw.body.Len() > 0 {
		_, _ = rw.w.Write(rw.body.Bytes())
	}
}
