// Package backoff owns the one retry delay every Aegis loop uses (the daemon's
// reconnects, refreshes and rotations, the CLI's re-attaching watch, the control
// plane's LISTEN connection): capped exponential growth with full jitter, the random
// share taken after the cap so that a fleet that has reached the cap still spreads
// out, and the same rule for a delay the server asked for ("come back in X"): wait X,
// capped, then add a random share on top, never less than asked.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is a retry schedule. The zero value is usable: Min 250ms, Max 30s.
type Policy struct {
	// Min is the ceiling of the first delay; each attempt doubles it up to Max.
	Min time.Duration
	// Max caps every delay, including one the server asked for (After).
	Max time.Duration
	// Rand returns a uniform float in [0,1); nil means math/rand/v2.Float64. Tests
	// inject a fixed source.
	Rand func() float64
}

func (p Policy) bounds() (lo, hi time.Duration) {
	lo, hi = p.Min, p.Max
	if lo <= 0 {
		lo = 250 * time.Millisecond
	}
	if hi <= 0 {
		hi = 30 * time.Second
	}
	return lo, max(lo, hi)
}

func (p Policy) rand() float64 {
	if p.Rand != nil {
		if f := p.Rand(); f >= 0 && f < 1 {
			return f
		}
		return 0
	}
	return rand.Float64()
}

// Ceiling is the cap of attempt n (0-based): min(Max, Min*2^n).
func (p Policy) Ceiling(n int) time.Duration {
	lo, hi := p.bounds()
	c := lo
	for i := 0; i < n && c < hi; i++ {
		c *= 2
	}
	return min(c, hi)
}

// Delay is the wait before retry n (0-based): uniform in [0, Ceiling(n)), the
// ceiling capped first and the jitter applied to the capped value ("full jitter").
func (p Policy) Delay(n int) time.Duration {
	return time.Duration(p.rand() * float64(p.Ceiling(n)))
}

// After is the wait for a server that said "come back in hint": the hint, capped at
// Max (a buggy or hostile server cannot park a host for ever), plus a random share
// of up to a tenth of it (at most Min) on top, so hosts told the same moment do not
// return in the same millisecond. The result is never shorter than the capped hint.
func (p Policy) After(hint time.Duration) time.Duration {
	lo, hi := p.bounds()
	d := min(max(hint, 0), hi)
	spread := min(d/10, lo)
	return d + time.Duration(p.rand()*float64(spread))
}
