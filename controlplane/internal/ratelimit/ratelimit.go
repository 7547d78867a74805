// Package ratelimit owns the in-memory token buckets that slow down unauthenticated
// calls (challenges, attestations) per key — a node id or a source address. Limits are
// per replica: they blunt floods, they are not an accounting system.
package ratelimit

import (
	"sync"
	"time"
)

// Limiter is a set of token buckets keyed by string. Safe for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	buckets map[string]*bucket
	lastGC  time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

// New makes a limiter allowing burst calls at once and rate per second after that.
func New(rate float64, burst int) *Limiter {
	return &Limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// Allow takes one token from key's bucket at now; false when it is empty.
func (l *Limiter) Allow(key string, now time.Time) bool {
	ok, _ := l.Take(key, now)
	return ok
}

// Take is Allow that also says, when the bucket is empty, how long until it holds a
// token again: the retry-after a refusal carries.
func (l *Limiter) Take(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gc(now)
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	if el := now.Sub(b.at).Seconds(); el > 0 {
		b.tokens = min(l.burst, b.tokens+el*l.rate)
	}
	b.at = now
	if b.tokens < 1 {
		if l.rate <= 0 {
			return false, time.Minute
		}
		wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
		return false, max(wait, time.Millisecond)
	}
	b.tokens--
	return true, 0
}

// Rate and Burst are the limiter's settings (for messages and logs).
func (l *Limiter) Rate() float64 { return l.rate }
func (l *Limiter) Burst() int    { return int(l.burst) }

// gc drops buckets that have refilled completely, so the map stays as small as the
// set of recently busy keys.
func (l *Limiter) gc(now time.Time) {
	if now.Sub(l.lastGC) < time.Minute {
		return
	}
	l.lastGC = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.at) > full {
			delete(l.buckets, k)
		}
	}
}
