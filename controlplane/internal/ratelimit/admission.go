package ratelimit

import (
	"sync"
	"time"
)

// Admission paces new streams: it admits at most Rate a second (after a burst of
// Burst), and gives every stream over the rate a slot of its own in the future, so
// a storm of reconnects becomes a queue instead of a retry loop. A refused stream is
// told "come back in X" with X its slot; slots are handed out in arrival order, one
// every 1/Rate, and a stream that comes back at (or after) its slot is admitted
// without taking another one. With N streams arriving at once, each makes at most
// two attempts and the last is admitted N/Rate after the first.
//
// The slot is remembered by the key the caller passes (the node id the stream's
// first envelope names, before it is verified): a forger naming another node can at
// worst make that node wait one more slot, and the envelope is verified right after
// admission anyway. Safe for concurrent use.
type Admission struct {
	mu    sync.Mutex
	every time.Duration // 1/rate
	burst time.Duration // how far the schedule may run behind now: (burst-1)/rate
	// next is the schedule's theoretical next free slot.
	next time.Time
	// promised maps a refused key to its slot.
	promised map[string]time.Time
	lastGC   time.Time
}

// Admission defaults (controlplane serve --stream-admission-rate, -burst): about
// what this 2-core box sustains for a new TLS stream (handshake, token and envelope
// verification, the session row) while 10,000 others heartbeat, and so 10,000
// daemons are all back within 60s of a restart.
const (
	DefaultAdmissionRate  = 300
	DefaultAdmissionBurst = 300
)

// promiseGrace is how long after its slot a promise is kept: a daemon comes back a
// little late (jitter, a slow handshake) and must still find it.
const promiseGrace = 30 * time.Second

// MaxAhead bounds the queue: no slot is promised further ahead than this. A stream
// arriving when the queue is full is told to come back in MaxAhead without a slot,
// so a flood of streams (genuine or forged node ids) costs bounded memory, and
// never parks a daemon for longer than this.
const MaxAhead = 2 * time.Minute

// NewAdmission paces at rate streams a second with a burst of burst; a rate <= 0
// admits everything.
func NewAdmission(rate float64, burst int) *Admission {
	if rate <= 0 {
		return nil
	}
	every := time.Duration(float64(time.Second) / rate)
	return &Admission{
		every: every,
		// The slot at now itself is admitted too, so burst-1 slots behind it.
		burst:    time.Duration(max(burst, 1)-1) * every,
		promised: map[string]time.Time{},
	}
}

// Admit decides for a stream of key arriving at now: admitted, or the wait until its
// slot.
func (a *Admission) Admit(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if a == nil {
		return true, 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gc(now)
	if slot, had := a.promised[key]; had {
		if !now.Before(slot) {
			delete(a.promised, key)
			return true, 0
		}
		// Back too early: same slot, no new one.
		return false, slot.Sub(now)
	}
	// The schedule never lags more than the burst behind now: idle time buys at
	// most Burst immediate admissions.
	if floor := now.Add(-a.burst); a.next.Before(floor) {
		a.next = floor
	}
	slot := a.next
	if slot.Sub(now) > MaxAhead {
		return false, MaxAhead
	}
	a.next = a.next.Add(a.every)
	if !slot.After(now) {
		return true, 0
	}
	a.promised[key] = slot
	return false, slot.Sub(now)
}

// Waiting is how many refused streams hold a slot now.
func (a *Admission) Waiting() int {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.promised)
}

func (a *Admission) gc(now time.Time) {
	if now.Sub(a.lastGC) < time.Second {
		return
	}
	a.lastGC = now
	for k, slot := range a.promised {
		if now.Sub(slot) > promiseGrace {
			delete(a.promised, k)
		}
	}
}
