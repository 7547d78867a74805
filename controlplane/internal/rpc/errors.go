// Package rpc owns the Connect handlers of NodeClusterService and EdgeAdminService:
// translating protobuf to domain calls and back, mapping domain errors to Connect
// codes (daemon refusals carry an api/reject Rejection detail), logging each failure
// once, and the interceptors for operator authentication and RPC metrics.
package rpc

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/enroll"
	"github.com/aegis-edge/aegis/controlplane/internal/fleet"
	"github.com/aegis-edge/aegis/controlplane/internal/hosts"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/operators"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
)

// toConnect maps a domain error to the error a client sees, logging it once. Internal
// failures are logged with their detail and returned without it.
func toConnect(ctx context.Context, logger *slog.Logger, now time.Time, op string, err error) error {
	if err == nil {
		return nil
	}
	if r, ok := rejection.As(err); ok {
		if r.RetryAfter > 0 {
			// Expected under load (a storm, a bulk enrollment): not worth a line each.
			logger.DebugContext(ctx, "refused", "rpc", op, "reason", reject.Short(r.Reason), "msg", r.Msg, "retry_after", r.RetryAfter)
		} else {
			logger.InfoContext(ctx, "refused", "rpc", op, "reason", reject.Short(r.Reason), "msg", r.Msg)
		}
		return reject.NewRetry(r.Reason, r.Msg, now, r.RetryAfter)
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	var code connect.Code
	switch {
	case errors.Is(err, apitoken.ErrUnauthenticated):
		code = connect.CodeUnauthenticated
	case errors.Is(err, apitoken.ErrPermissionDenied):
		code = connect.CodePermissionDenied
	case errors.Is(err, store.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, enroll.ErrInvalid), errors.Is(err, hosts.ErrInvalid), errors.Is(err, toolcall.ErrInvalid),
		errors.Is(err, fleet.ErrInvalid), errors.Is(err, operators.ErrInvalid), errors.Is(err, keypolicy.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, operators.ErrExists):
		code = connect.CodeAlreadyExists
	case errors.Is(err, operators.ErrLastAdmin), errors.Is(err, enroll.ErrAlreadyUsed), errors.Is(err, hosts.ErrStillValid),
		errors.Is(err, toolcall.ErrFollowed):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, toolcall.ErrBusy), errors.Is(err, fleet.ErrShuttingDown):
		code = connect.CodeUnavailable
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	default:
		logger.ErrorContext(ctx, "internal error", "rpc", op, "err", err)
		return connect.NewError(connect.CodeInternal, errors.New("internal error (logged on the control plane)"))
	}
	logger.InfoContext(ctx, "refused", "rpc", op, "code", code.String(), "err", err)
	return connect.NewError(code, err)
}
