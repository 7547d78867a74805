// Package session owns the live streams held by this replica: the registry from node
// id to its one open stream (a newer stream replaces an older one), the way other
// parts of the control plane reach a stream (a Kick that makes it send Disconnect and
// close) or hand it a Command to send down to the daemon (refresh your token, rotate
// your key, run or cancel a tool call), and the batching of last_seen_at so that heartbeats never cost a
// database write each. The registry never sends on a stream itself: the stream's
// own goroutine does every Send.
package session

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

var (
	// ErrClosed: the registry is shutting down and takes no new streams.
	ErrClosed = errors.New("control plane is shutting down")
	// ErrNoStream: the node has no live stream on this replica.
	ErrNoStream = errors.New("node has no live stream on this replica")
	// ErrBusy: the node's stream has too many commands waiting to be sent.
	ErrBusy = errors.New("node's stream has too many commands pending")
)

// Reason says why a stream is being closed by the server.
type Reason int

const (
	ReasonShutdown Reason = iota + 1
	ReasonReplaced
	ReasonRevoked
	ReasonReattest
)

// Kick asks a stream to send Disconnect and end.
type Kick struct {
	Reason         Reason
	ReconnectAfter time.Duration
	Message        string
	// RevokedAt is when the revocation behind a ReasonRevoked kick committed (zero
	// when unknown): the stream observes the propagation time once it is closed.
	RevokedAt time.Time
}

// CommandKind names what a Command asks the daemon to do.
type CommandKind int

const (
	// CommandRefreshToken: re-attest now and swap the new token in.
	CommandRefreshToken CommandKind = iota + 1
	// CommandRotateKey: run the whole key rotation on the host.
	CommandRotateKey
	// CommandInvokeTool: run Invoke (a tool call) under the host's local policy.
	CommandInvokeTool
	// CommandCancelTool: stop the running tool call CommandID.
	CommandCancelTool
	// CommandRotationPolicy: the host's policy max key age is now MaxKeyAge.
	CommandRotationPolicy
	// CommandQueryTool: send the result of tool call CommandID again, or say it is
	// lost (an operator re-attached after a restart).
	CommandQueryTool
)

func (k CommandKind) String() string {
	switch k {
	case CommandRefreshToken:
		return "refresh_token"
	case CommandRotateKey:
		return "rotate_key"
	case CommandInvokeTool:
		return "invoke_tool"
	case CommandCancelTool:
		return "cancel_tool"
	case CommandRotationPolicy:
		return "rotation_policy"
	case CommandQueryTool:
		return "query_tool"
	}
	return "unknown"
}

// Command is a request for the daemon, delivered down its stream.
type Command struct {
	Kind CommandKind
	// Reason is shown by the daemon (CommandRefreshToken).
	Reason string
	// FleetRunID is echoed in the rotation's audit entry (CommandRotateKey).
	FleetRunID string
	// KeepOld is how long the host keeps the archived key; 0 means its default.
	KeepOld time.Duration
	// CommandID names the tool call (CommandInvokeTool, CommandCancelTool).
	CommandID string
	// Invoke is the call to run (CommandInvokeTool).
	Invoke *Invocation
	// MaxKeyAge is the host's policy maximum, 0 for none (CommandRotationPolicy).
	MaxKeyAge time.Duration
}

// Invocation is one tool call as the daemon receives it.
type Invocation struct {
	Tool    string
	Command string
	Args    []string
	Cwd     string
	Env     map[string]string
	// Deadline is when the daemon must have killed the call (server clock).
	Deadline time.Time
	// SecurityContext is the context the server believes the host is in; the daemon
	// denies the call when its token names another.
	SecurityContext string
}

// commandQueue bounds the commands waiting for one stream's goroutine. A daemon
// acts on one at a time; a caller that finds the queue full retries later rather
// than piling up work the daemon would do twice.
const commandQueue = 8

// Handle is one registered stream.
type Handle struct {
	NodeID    string
	SessionID string
	// Since is when the stream was opened, as recorded in its session row.
	Since time.Time
	kick  chan Kick
	// cmds holds pointers: eight queued Commands by value would cost every stream
	// 640 bytes for a queue that is almost always empty.
	cmds     chan *Command
	once     sync.Once
	released sync.Once
	// onWork is called after each kick or command is queued (OnWork).
	onWork atomic.Pointer[func()]
}

// OnWork sets f to be called, on the queuing goroutine and with no lock held, after
// each Kick or Command is queued for h, so the stream needs no goroutine waiting on
// Kicked and Commands while its daemon is silent. f must not block. Work queued
// before OnWork is signalled at once.
func (h *Handle) OnWork(f func()) {
	h.onWork.Store(&f)
	if len(h.kick) > 0 || len(h.cmds) > 0 {
		f()
	}
}

func (h *Handle) wake() {
	if f := h.onWork.Load(); f != nil {
		(*f)()
	}
}

// Kicked delivers at most one Kick.
func (h *Handle) Kicked() <-chan Kick { return h.kick }

// Commands delivers the commands to send down the stream, in order.
func (h *Handle) Commands() <-chan *Command { return h.cmds }

func (h *Handle) send(k Kick) {
	h.once.Do(func() { h.kick <- k })
	h.wake()
}

// Registry maps node ids to their open stream on this replica. Safe for concurrent
// use.
type Registry struct {
	mu      sync.Mutex
	byNode  map[string]*Handle
	closed  bool
	live    sync.WaitGroup
	metrics *metrics.Metrics
}

// NewRegistry returns an empty registry reporting to m (may be nil).
func NewRegistry(m *metrics.Metrics) *Registry {
	return &Registry{byNode: map[string]*Handle{}, metrics: m}
}

// Attach registers a stream for nodeID. An older stream of the same node is kicked
// with ReasonReplaced. After Shutdown it returns ErrClosed. Every attached handle
// must be Released.
func (r *Registry) Attach(nodeID, sessionID string) (*Handle, error) {
	return r.AttachSince(nodeID, sessionID, time.Time{})
}

// AttachSince is Attach for a stream whose session row says it opened at since.
func (r *Registry) AttachSince(nodeID, sessionID string, since time.Time) (*Handle, error) {
	h := &Handle{NodeID: nodeID, SessionID: sessionID, Since: since, kick: make(chan Kick, 1), cmds: make(chan *Command, commandQueue)}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	old := r.byNode[nodeID]
	r.byNode[nodeID] = h
	r.live.Add(1)
	r.mu.Unlock()
	r.metrics.ConnectedDaemons(1)
	if old != nil {
		old.send(Kick{Reason: ReasonReplaced, Message: "a newer stream for this node took over"})
	}
	return h, nil
}

// Release unregisters h (if it is still the node's current stream) once the stream
// has ended.
func (r *Registry) Release(h *Handle) {
	h.released.Do(func() {
		r.mu.Lock()
		if r.byNode[h.NodeID] == h {
			delete(r.byNode, h.NodeID)
		}
		r.mu.Unlock()
		r.metrics.ConnectedDaemons(-1)
		r.live.Done()
	})
}

// Get returns the node's current stream on this replica.
func (r *Registry) Get(nodeID string) (*Handle, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.byNode[nodeID]
	return h, ok
}

// Kick asks the node's current stream (if on this replica) to disconnect.
func (r *Registry) Kick(nodeID string, k Kick) bool {
	h, ok := r.Get(nodeID)
	if ok {
		h.send(k)
	}
	return ok
}

// Send queues c for the node's current stream on this replica: ErrNoStream if there
// is none, ErrBusy if its queue is full. A queued command is sent unless the stream
// ends first.
func (r *Registry) Send(nodeID string, c Command) error {
	h, ok := r.Get(nodeID)
	if !ok {
		return ErrNoStream
	}
	select {
	case h.cmds <- &c:
		h.wake()
		return nil
	default:
		return ErrBusy
	}
}

// Len is the number of registered streams.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byNode)
}

// Shutdown refuses new streams and kicks every registered one with ReasonShutdown and
// a reconnect hint of its own: after(i, n) for the i-th of n streams, so the hints
// can spread the fleet's return over a window. It then waits until every stream has
// been released or ctx ends.
func (r *Registry) Shutdown(ctx context.Context, after func(i, n int) time.Duration) error {
	r.mu.Lock()
	r.closed = true
	all := make([]*Handle, 0, len(r.byNode))
	for _, h := range r.byNode {
		all = append(all, h)
	}
	r.mu.Unlock()
	for i, h := range all {
		h.send(Kick{Reason: ReasonShutdown, ReconnectAfter: after(i, len(all)), Message: "control plane is shutting down: reconnect after the hint"})
	}
	done := make(chan struct{})
	go func() { r.live.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// LastSeen batches heartbeat times and writes them with one TouchLastSeen per flush.
// It also remembers the newest time per node it has seen, so status queries on this
// replica are current between flushes. Touch is on every heartbeat's path: it takes
// no lock (see Presence for why).
type LastSeen struct {
	store  store.Tx
	logger *slog.Logger

	byNode sync.Map // node id -> *seen
}

type seen struct {
	at    atomic.Int64 // unix nanoseconds of the newest time seen
	dirty atomic.Bool  // at is not written yet
}

// NewLastSeen returns a batcher writing to st.
func NewLastSeen(st store.Tx, logger *slog.Logger) *LastSeen {
	return &LastSeen{store: st, logger: logger}
}

// Touch records that node was seen at t.
func (l *LastSeen) Touch(nodeID string, t time.Time) {
	v, ok := l.byNode.Load(nodeID)
	if !ok {
		v, _ = l.byNode.LoadOrStore(nodeID, &seen{})
	}
	e := v.(*seen)
	n := t.UnixNano()
	for {
		old := e.at.Load()
		if n <= old {
			return
		}
		if e.at.CompareAndSwap(old, n) {
			e.dirty.Store(true)
			return
		}
	}
}

// Latest is the newest time this replica saw node (zero if none).
func (l *LastSeen) Latest(nodeID string) time.Time {
	v, ok := l.byNode.Load(nodeID)
	if !ok {
		return time.Time{}
	}
	if n := v.(*seen).at.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Forget drops node from the in-memory view (after its stream ends and was flushed).
func (l *LastSeen) Forget(nodeID string) {
	if v, ok := l.byNode.Load(nodeID); ok && !v.(*seen).dirty.Load() {
		l.byNode.CompareAndDelete(nodeID, v)
	}
}

// Flush writes pending times. On failure they are kept for the next flush.
func (l *LastSeen) Flush(ctx context.Context) error {
	batch := map[string]time.Time{}
	var taken []*seen
	l.byNode.Range(func(k, v any) bool {
		e := v.(*seen)
		if e.dirty.Swap(false) {
			batch[k.(string)] = time.Unix(0, e.at.Load())
			taken = append(taken, e)
		}
		return true
	})
	if len(batch) == 0 {
		return nil
	}
	if err := l.store.TouchLastSeen(ctx, batch); err != nil {
		for _, e := range taken {
			e.dirty.Store(true)
		}
		return err
	}
	return nil
}

// Run flushes every interval until ctx ends (the caller does a final Flush).
func (l *LastSeen) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := l.Flush(ctx); err != nil && ctx.Err() == nil {
				l.logger.Warn("flush last_seen_at", "err", err)
			}
		}
	}
}

// Live lists the streams registered now, for re-asserting their session rows.
func (r *Registry) Live() []store.LiveSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]store.LiveSession, 0, len(r.byNode))
	for _, h := range r.byNode {
		out = append(out, store.LiveSession{NodeID: h.NodeID, SessionID: h.SessionID, Since: h.Since})
	}
	return out
}
