package session

import (
	"context"
	"sync"
	"sync/atomic"
)

// Credentials are what a node's stream last presented: the fingerprint of the key
// that signed its last accepted envelope and the jti of the token it carried.
type Credentials struct {
	KeyFingerprint string
	TokenJTI       string
}

// Presence remembers, per node, the credentials its live streams on this replica
// last presented, and wakes whoever waits for them to change. A fleet run counts a
// rotation or refresh as done only once the host's stream has shown the new key
// and token, so the hook sits on the verified path of ConnectEdge: every heartbeat
// of every stream passes here. Under unchanged credentials that costs a lock-free
// map load and an atomic pointer load, and takes no lock: a mutex shared by every
// stream convoys at fleet scale (a holder descheduled on a busy machine parks
// thousands of heartbeats behind it; the load tool saw 6,000 streams queued there).
type Presence struct {
	byNode   sync.Map // node id -> *presented
	onChange func(nodeID string, creds Credentials)
}

type presented struct {
	// cur is what was last presented (nil until the first), read without the lock.
	cur atomic.Pointer[Credentials]
	// mu orders changes and guards changed.
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
}

func (p *Presence) entry(nodeID string) *presented {
	if e, ok := p.byNode.Load(nodeID); ok {
		return e.(*presented)
	}
	e, _ := p.byNode.LoadOrStore(nodeID, &presented{changed: make(chan struct{})})
	return e.(*presented)
}

// NewPresence returns an empty Presence.
func NewPresence() *Presence { return &Presence{} }

// Presented records that nodeID's stream presented creds in an accepted envelope.
// A change (or a node's first envelope here) is also handed to the OnChange hook,
// after the lock is released.
func (p *Presence) Presented(nodeID string, creds Credentials) {
	if p == nil {
		return
	}
	if p.set(nodeID, creds) && p.onChange != nil {
		p.onChange(nodeID, creds)
	}
}

// Learn records what nodeID's stream on another replica presented, as that
// replica reported it; it is not handed to OnChange.
func (p *Presence) Learn(nodeID string, creds Credentials) {
	if p == nil {
		return
	}
	p.set(nodeID, creds)
}

// OnChange makes every later change Presented records (not Learn) call fn, so the
// other replicas learn it. Call it before the Presence is shared. fn runs on the
// stream's goroutine with no lock held.
func (p *Presence) OnChange(fn func(nodeID string, creds Credentials)) { p.onChange = fn }

// set records creds and reports whether they changed.
func (p *Presence) set(nodeID string, creds Credentials) bool {
	e := p.entry(nodeID)
	if c := e.cur.Load(); c != nil && *c == creds {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.cur.Load(); c != nil && *c == creds {
		return false
	}
	e.cur.Store(&creds)
	close(e.changed)
	e.changed = make(chan struct{})
	return true
}

// Current returns what nodeID last presented on this replica (ok false if never)
// and a channel closed at the next change. A node never seen is registered now, so
// a waiter learns of its first envelope too.
func (p *Presence) Current(nodeID string) (creds Credentials, ok bool, changed <-chan struct{}) {
	e := p.entry(nodeID)
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.cur.Load(); c != nil {
		creds = *c
	}
	return creds, creds != (Credentials{}), e.changed
}

// Wait blocks until what nodeID presented satisfies done, or ctx ends (then it
// returns ctx's error).
func (p *Presence) Wait(ctx context.Context, nodeID string, done func(Credentials) bool) error {
	for {
		creds, ok, changed := p.Current(nodeID)
		if ok && done(creds) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
