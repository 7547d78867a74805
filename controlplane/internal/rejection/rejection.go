// Package rejection owns the domain's typed refusal of a daemon request: an error
// carrying the protocol's RejectReason (the shared vocabulary daemons act on) and a
// message that never contains a secret. Domain packages return it; the RPC edge turns
// it into a Connect error with a Rejection detail (api/reject).
package rejection

import (
	"errors"
	"fmt"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

// Error is a typed refusal.
type Error struct {
	Reason edgev1.RejectReason
	Msg    string
	// RetryAfter, when positive, tells the daemon when to come back (RATE_LIMITED,
	// BUSY).
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Msg }

// New builds a refusal; the message must not contain secrets.
func New(reason edgev1.RejectReason, format string, a ...any) *Error {
	return &Error{Reason: reason, Msg: fmt.Sprintf(format, a...)}
}

// Retry builds a refusal that says when to come back.
func Retry(reason edgev1.RejectReason, after time.Duration, format string, a ...any) *Error {
	e := New(reason, format, a...)
	e.RetryAfter = after
	return e
}

// As finds a refusal in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// Reason is the refusal's reason, or UNSPECIFIED when err is not a refusal.
func Reason(err error) edgev1.RejectReason {
	if e, ok := As(err); ok {
		return e.Reason
	}
	return edgev1.RejectReason_REJECT_REASON_UNSPECIFIED
}
