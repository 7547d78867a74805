// Package reject owns how a refusal of a daemon's request travels: a Connect error
// whose code suits generic clients and whose detail is an edgev1.Rejection with the
// typed reason the daemon acts on and the server's clock.
package reject

import (
	"errors"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Code is the Connect code each reason travels under.
func Code(r edgev1.RejectReason) connect.Code {
	switch r {
	case edgev1.RejectReason_REJECT_REASON_MALFORMED, edgev1.RejectReason_REJECT_REASON_KEY_INVALID:
		return connect.CodeInvalidArgument
	case edgev1.RejectReason_REJECT_REASON_REVOKED:
		return connect.CodePermissionDenied
	case edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE:
		return connect.CodeNotFound
	case edgev1.RejectReason_REJECT_REASON_RATE_LIMITED:
		return connect.CodeResourceExhausted
	case edgev1.RejectReason_REJECT_REASON_BUSY:
		return connect.CodeUnavailable
	case edgev1.RejectReason_REJECT_REASON_KEY_IN_USE, edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT,
		edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_USED:
		return connect.CodeFailedPrecondition
	default:
		return connect.CodeUnauthenticated
	}
}

// New builds the error for reason. msg must not contain secrets.
func New(reason edgev1.RejectReason, msg string, serverTime time.Time) *connect.Error {
	return NewRetry(reason, msg, serverTime, 0)
}

// NewRetry is New with a "come back in retryAfter" (0: none).
func NewRetry(reason edgev1.RejectReason, msg string, serverTime time.Time, retryAfter time.Duration) *connect.Error {
	err := connect.NewError(Code(reason), errors.New(msg))
	rj := &edgev1.Rejection{
		Reason:     reason,
		Message:    msg,
		ServerTime: timestamppb.New(serverTime),
	}
	if retryAfter > 0 {
		rj.RetryAfter = durationpb.New(retryAfter)
	}
	if d, derr := connect.NewErrorDetail(rj); derr == nil {
		err.AddDetail(d)
	}
	return err
}

// From extracts the Rejection carried by err, if any.
func From(err error) (*edgev1.Rejection, bool) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil, false
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if r, ok := v.(*edgev1.Rejection); ok {
			return r, true
		}
	}
	return nil, false
}

// RetryAfter is the refusal's "come back in", 0 when err carries none.
func RetryAfter(err error) time.Duration {
	if r, ok := From(err); ok && r.GetRetryAfter() != nil {
		return max(r.GetRetryAfter().AsDuration(), 0)
	}
	return 0
}

// Reason is From's reason, or UNSPECIFIED.
func Reason(err error) edgev1.RejectReason {
	if r, ok := From(err); ok {
		return r.GetReason()
	}
	return edgev1.RejectReason_REJECT_REASON_UNSPECIFIED
}

// IsTerminal reports whether a daemon must give up its identity: only a revoked or
// unknown node is told so.
func IsTerminal(r edgev1.RejectReason) bool {
	return r == edgev1.RejectReason_REJECT_REASON_REVOKED || r == edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE
}

// NeedsAttest reports whether re-attesting with the node's key may fix the refusal.
func NeedsAttest(r edgev1.RejectReason) bool {
	switch r {
	case edgev1.RejectReason_REJECT_REASON_TOKEN_EXPIRED, edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW,
		edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED, edgev1.RejectReason_REJECT_REASON_TOKEN_INVALID,
		edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH:
		return true
	}
	return false
}

// Short is the lower-case name operators see ("revoked", "clock_skew", ...).
func Short(r edgev1.RejectReason) string {
	name := edgev1.RejectReason_name[int32(r)]
	const prefix = "REJECT_REASON_"
	if len(name) > len(prefix) {
		name = name[len(prefix):]
	}
	out := make([]byte, len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}
