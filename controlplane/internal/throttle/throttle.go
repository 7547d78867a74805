// Package throttle owns the server-wide bound on expensive node requests: a
// semaphore that caps how many rotations and attestations run at once
// (--max-concurrent-rotations), so a parallel fleet run over thousands of hosts
// queues them here instead of piling transactions onto the database. Requests
// that had to wait are counted (aegis_edge_throttled_requests_total).
package throttle

import (
	"context"

	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
)

// DefaultLimit is the default number of concurrent rotations and attestations.
const DefaultLimit = 64

// Limiter is a counting semaphore. The zero value is unusable; a nil *Limiter
// admits everything.
type Limiter struct {
	slots   chan struct{}
	metrics *metrics.Metrics
}

// New returns a Limiter of n slots (DefaultLimit when n <= 0) reporting to m.
func New(n int, m *metrics.Metrics) *Limiter {
	if n <= 0 {
		n = DefaultLimit
	}
	return &Limiter{slots: make(chan struct{}, n), metrics: m}
}

// Acquire takes a slot, waiting (and counting the wait) when none is free, until
// ctx ends. The returned func gives the slot back.
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	default:
	}
	l.metrics.Throttled()
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Limiter) release() { <-l.slots }
