package agent

import (
	"sync"
	"time"
)

// refreshJitter spreads token refreshes: hosts issued tokens together (a fleet
// enrolled or rotated in one run) would otherwise all refresh at exp - margin. Each
// token gets one random draw; its refresh happens between margin and margin/2 before
// expiry, so there is always at least half the margin left to retry.
type refreshJitter struct {
	mu    sync.Mutex
	token string
	draw  float64
}

// margin is the jittered margin for token (the same for every call with one token).
func (r *refreshJitter) margin(token string, margin time.Duration, jitter func() float64) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if token != r.token {
		r.token, r.draw = token, jitter()
	}
	return margin - time.Duration(r.draw*float64(margin/2))
}
