package session

import (
	"context"
	"sync"
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
// and token, so the hook sits on the verified path of ConnectEdge. A heartbeat
// under unchanged credentials costs one map lookup and allocates nothing.
type Presence struct {
	mu       sync.Mutex
	byNode   map[string]*presented
	onChange func(nodeID string, creds Credentials)
}

type presented struct {
	creds   Credentials
	changed chan struct{} // closed and replaced on every change
}

// NewPresence returns an empty Presence.
func NewPresence() *Presence { return &Presence{byNode: map[string]*presented{}} }

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
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.byNode[nodeID]
	if e == nil {
		p.byNode[nodeID] = &presented{creds: creds, changed: make(chan struct{})}
		return true
	}
	if e.creds == creds {
		return false
	}
	e.creds = creds
	close(e.changed)
	e.changed = make(chan struct{})
	return true
}

// Current returns what nodeID last presented on this replica (ok false if never)
// and a channel closed at the next change.
func (p *Presence) Current(nodeID string) (creds Credentials, ok bool, changed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.byNode[nodeID]
	if e == nil {
		// Registered now so a waiter learns of the node's first envelope too.
		e = &presented{changed: make(chan struct{})}
		p.byNode[nodeID] = e
		return Credentials{}, false, e.changed
	}
	return e.creds, e.creds != (Credentials{}), e.changed
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
