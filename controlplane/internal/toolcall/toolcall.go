// Package toolcall owns the tool calls this replica has sent to hosts (cmd.run): it
// starts a call on a node's live stream, keeps the pending call (command id -> the
// waiting operator) while the daemon runs it, hands the daemon's output to the
// waiter in order and its one result after it, forwards a cancel, and keeps waiting
// across the daemon's reconnects until the deadline plus a grace, after which the
// call ends as edge_disconnected. Every finished call is audited (never its output)
// and counted. The server chooses which security context a host evaluates against;
// what a context allows is the host's own policy, so nothing here interprets it.
package toolcall

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// ToolCmdRun is the one tool there is.
const ToolCmdRun = "cmd.run"

const (
	// DefaultDeadline is a call's deadline when the operator gives none.
	DefaultDeadline = 60 * time.Second
	// MaxDeadline bounds how long one call may hold a host's process and a pending
	// entry here.
	MaxDeadline = 24 * time.Hour
	// DefaultGrace is how long after its deadline a call still waits for a result
	// the daemon may send after reconnecting.
	DefaultGrace = 30 * time.Second
	// maxQueued bounds the output held for one slow operator; the daemon caps its
	// output far below this (1 MiB by default), so only a misbehaving daemon or a
	// stalled client gets here, and then further chunks are dropped, not buffered.
	maxQueued = 8 << 20
	// lateKeep bounds how long output and results that arrive for a call nobody
	// follows here (the Exec that started it was on a process that has stopped) are
	// kept for an Attach; lateMaxBytes bounds their total.
	lateKeep     = 10 * time.Minute
	lateMaxBytes = 16 << 20
	// lateNodeMaxBytes bounds what one node may have kept, so a daemon reporting
	// made-up command ids cannot push out what other hosts' calls left.
	lateNodeMaxBytes = 2 << 20
)

var (
	// ErrInvalid wraps refusals of malformed requests.
	ErrInvalid = errors.New("invalid request")
	// ErrBusy: the host's stream has too many commands waiting; retry.
	ErrBusy = errors.New("the host has too many commands waiting to be sent: retry shortly")
	// ErrFollowed: an Attach for a call that an Exec or Attach here still follows.
	ErrFollowed = errors.New("the call is still followed by another Exec or attach on this control plane")
)

// ErrorKind says why a call did not run to completion.
type ErrorKind int

const (
	KindNone ErrorKind = iota
	KindTimeout
	KindCancelled
	KindDenied
	KindToolNotFound
	KindInternal
	KindEdgeDisconnected
	// KindResultLost: the host no longer holds the result of a call re-attached to.
	KindResultLost
	// KindShutdown: this control plane is stopping; the call goes on on the host and
	// its caller re-attaches (Attach) to another process or replica.
	KindShutdown
)

// String is the kind as metrics and audit entries name it.
func (k ErrorKind) String() string {
	switch k {
	case KindNone:
		return "none"
	case KindTimeout:
		return "timeout"
	case KindCancelled:
		return "cancelled"
	case KindDenied:
		return "denied"
	case KindToolNotFound:
		return "tool_not_found"
	case KindInternal:
		return "internal"
	case KindEdgeDisconnected:
		return "edge_disconnected"
	case KindResultLost:
		return "result_lost"
	case KindShutdown:
		return "control_plane_shutdown"
	}
	return "unknown"
}

// Stream names where a chunk of output came from.
type Stream int

const (
	Stdout Stream = iota + 1
	Stderr
)

// Progress is one chunk of a call's output.
type Progress struct {
	Sequence uint64
	Stream   Stream
	Data     []byte
}

// Result ends a call.
type Result struct {
	ExitCode        int32
	OK              bool
	Kind            ErrorKind
	Message         string
	OutputTruncated bool
	// Duration is how long the process ran, as the daemon measured it.
	Duration     time.Duration
	LastSequence uint64
}

// label is the result as aegis_edge_tool_calls_total names it.
func (r Result) label() string {
	switch {
	case r.Kind != KindNone:
		return r.Kind.String()
	case r.OK:
		return "ok"
	default:
		return "failed"
	}
}

// Event is what a waiting caller receives: a Progress, or (last) the Result.
type Event struct {
	Progress *Progress
	Result   *Result
}

// Request is an operator's cmd.run.
type Request struct {
	NodeID  string
	Command string
	Args    []string
	Cwd     string
	// Deadline is how long the call may run; 0 means DefaultDeadline.
	Deadline time.Duration
}

// Config wires a Service.
type Config struct {
	Store store.Tx
	// Sessions reaches the node's stream, on this replica or (through the other
	// replicas) wherever it is.
	Sessions Sender
	// Elsewhere, if set, is handed output and results that arrive here for a call
	// this replica does not wait for, so the replica whose caller waits can be
	// told (see ProgressFrom, ResultFrom).
	Elsewhere func(nodeID, commandID string, ev Event)
	Metrics   *metrics.Metrics
	// Now is the protocol clock: InvokeTool.deadline is in the server's time.
	Now    func() time.Time
	Rand   io.Reader
	Logger *slog.Logger
	// Grace: DefaultGrace when 0.
	Grace time.Duration
}

// Service holds this replica's pending calls. Safe for concurrent use.
type Service struct {
	cfg     Config
	mu      sync.Mutex
	pending map[string]*Call
	// late holds what arrived for calls nobody follows here, for an Attach.
	late      map[string]*lateCall
	lateBytes int
	lateNode  map[string]int // bytes kept per node
	lateSweep time.Time
}

// lateCall is what arrived for one call nobody followed, oldest first.
type lateCall struct {
	nodeID string
	at     time.Time
	events []Event
	bytes  int
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	return &Service{cfg: cfg, pending: map[string]*Call{}, late: map[string]*lateCall{}, lateNode: map[string]int{}}
}

// Call is one tool call, from Start until its result (or the end of its grace).
type Call struct {
	ID              string
	NodeID          string
	TenantID        string
	Tool            string
	Command         string
	SecurityContext string
	Deadline        time.Time

	svc     *Service
	actor   string
	started time.Time // monotonic, for the duration metric
	timer   *time.Timer

	mu       sync.Mutex
	queue    []Event
	queued   int
	lastSeq  uint64
	finished bool
	taken    bool // the result has been handed to the caller
	ready    chan struct{}
	attached bool // followed by Attach, not started here
}

// Start sends a cmd.run to the node's live stream on this replica and returns the
// pending call. A node p cannot see is store.ErrNotFound. A node that is revoked or
// has no stream here yields a call already finished with KindEdgeDisconnected, so
// the caller reports every outcome the same way.
func (s *Service) Start(ctx context.Context, p apitoken.Principal, req Request) (*Call, error) {
	if !p.CanWrite() {
		return nil, fmt.Errorf("%w: role %q cannot run commands on hosts", apitoken.ErrPermissionDenied, p.Role)
	}
	if req.Command == "" {
		return nil, fmt.Errorf("%w: a command is required", ErrInvalid)
	}
	switch {
	case req.Deadline == 0:
		req.Deadline = DefaultDeadline
	case req.Deadline < 0:
		return nil, fmt.Errorf("%w: the deadline must be positive", ErrInvalid)
	case req.Deadline > MaxDeadline:
		return nil, fmt.Errorf("%w: the deadline may be at most %s", ErrInvalid, MaxDeadline)
	}
	d, err := s.cfg.Store.GetDaemon(ctx, req.NodeID)
	if err == nil && !p.Sees(d.TenantID) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("host %q: %w", req.NodeID, err)
	}
	id, err := newCommandID(s.cfg.Rand)
	if err != nil {
		return nil, err
	}
	c := &Call{
		ID: id, NodeID: d.NodeID, TenantID: d.TenantID, Tool: ToolCmdRun, Command: req.Command,
		SecurityContext: d.SecurityContext, Deadline: s.cfg.Now().Add(req.Deadline),
		svc: s, actor: "op:" + p.TokenID, started: time.Now(), ready: make(chan struct{}, 1),
	}
	if d.Status == store.DaemonRevoked {
		s.finish(c, Result{Kind: KindEdgeDisconnected, Message: "the host is revoked"})
		return c, nil
	}

	// Registered (with its end) before it is sent, so a result can never arrive for
	// an unknown id.
	c.timer = time.AfterFunc(req.Deadline+s.cfg.Grace, func() {
		s.finish(c, Result{Kind: KindEdgeDisconnected, Message: fmt.Sprintf("no result from the host by the deadline plus %s: it lost its connection or is not answering", s.cfg.Grace)})
	})
	s.mu.Lock()
	s.pending[id] = c
	s.mu.Unlock()
	err = s.cfg.Sessions.Send(d.NodeID, session.Command{Kind: session.CommandInvokeTool, CommandID: id, Invoke: &session.Invocation{
		Tool: ToolCmdRun, Command: req.Command, Args: req.Args, Cwd: req.Cwd,
		Deadline: c.Deadline, SecurityContext: d.SecurityContext,
	}})
	switch {
	case errors.Is(err, session.ErrNoStream):
		s.finish(c, Result{Kind: KindEdgeDisconnected, Message: "the host has no live stream to this control plane: is edged running there?"})
		return c, nil
	case errors.Is(err, session.ErrBusy):
		s.drop(c)
		return nil, ErrBusy
	case err != nil:
		s.drop(c)
		return nil, err
	}
	return c, nil
}

// Attach follows a call started earlier (by an Exec on a process that has since
// stopped, or on a replica that died): what arrived for it while nobody followed,
// then whatever the host sends. The host is asked (QueryTool) for a result it holds;
// one it does not know ends the call as KindResultLost. wait bounds the wait for the
// result (at most MaxDeadline + the grace). A host that is not connected ends the
// call at once as KindEdgeDisconnected: the result it kept comes when it is back,
// so the caller attaches again then.
func (s *Service) Attach(ctx context.Context, p apitoken.Principal, nodeID, commandID string, wait time.Duration) (*Call, error) {
	if !p.CanWrite() {
		return nil, fmt.Errorf("%w: role %q cannot follow commands on hosts", apitoken.ErrPermissionDenied, p.Role)
	}
	if !validCommandID(commandID) {
		return nil, fmt.Errorf("%w: command_id must be c- and 32 hex digits (ExecStarted.command_id)", ErrInvalid)
	}
	if wait <= 0 || wait > MaxDeadline+s.cfg.Grace {
		wait = MaxDeadline + s.cfg.Grace
	}
	d, err := s.cfg.Store.GetDaemon(ctx, nodeID)
	if err == nil && !p.Sees(d.TenantID) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("host %q: %w", nodeID, err)
	}
	c := &Call{
		ID: commandID, NodeID: d.NodeID, TenantID: d.TenantID, Tool: ToolCmdRun, Command: "(attached)",
		SecurityContext: d.SecurityContext, Deadline: s.cfg.Now().Add(wait),
		svc: s, actor: "op:" + p.TokenID, started: time.Now(), ready: make(chan struct{}, 1), attached: true,
	}
	s.mu.Lock()
	if _, ok := s.pending[commandID]; ok {
		s.mu.Unlock()
		return nil, ErrFollowed
	}
	var kept []Event
	if l := s.late[commandID]; l != nil && l.nodeID == d.NodeID {
		kept = l.events
		s.forgetLate(commandID)
	}
	s.pending[commandID] = c
	s.mu.Unlock()

	var result *Result
	for _, ev := range kept {
		if ev.Progress != nil {
			s.progress(d.NodeID, commandID, *ev.Progress)
		} else if result == nil {
			result = ev.Result
		}
	}
	if result != nil {
		s.finish(c, *result)
		return c, nil
	}
	c.timer = time.AfterFunc(wait, func() {
		s.finish(c, Result{Kind: KindEdgeDisconnected, Message: fmt.Sprintf("no result from the host within %s of attaching", wait)})
	})
	err = s.cfg.Sessions.Send(d.NodeID, session.Command{Kind: session.CommandQueryTool, CommandID: commandID})
	switch {
	case errors.Is(err, session.ErrNoStream):
		s.finish(c, Result{Kind: KindEdgeDisconnected, Message: "the host has no live stream to this control plane yet; the result it kept is sent when it reconnects: attach again"})
	case err != nil:
		s.drop(c)
		return nil, err
	}
	return c, nil
}

func validCommandID(id string) bool {
	if len(id) != 34 || id[:2] != "c-" {
		return false
	}
	_, err := hex.DecodeString(id[2:])
	return err == nil
}

// drop forgets c without a result (it was never sent).
func (s *Service) drop(c *Call) {
	if c.timer != nil {
		c.timer.Stop()
	}
	s.mu.Lock()
	delete(s.pending, c.ID)
	s.mu.Unlock()
}

// callOrKeep returns the pending call id if it is nodeID's (a daemon can never feed
// output or a result into another node's call). When no call is pending it keeps ev
// for an Attach, under the same lock Attach registers under, so nothing falls
// between the two.
func (s *Service) callOrKeep(nodeID, id string, ev Event) *Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.pending[id]; c != nil {
		if c.NodeID == nodeID {
			return c
		}
		return nil
	}
	s.keepLate(nodeID, id, ev)
	return nil
}

// keepLate keeps ev for an Attach, within the bounds: lateKeep old, lateNodeMaxBytes
// per node (further events of that node are dropped), lateMaxBytes in all (the
// oldest calls go first). Callers hold mu.
func (s *Service) keepLate(nodeID, id string, ev Event) {
	now := time.Now()
	if now.Sub(s.lateSweep) > time.Second {
		s.lateSweep = now
		for k, l := range s.late {
			if now.Sub(l.at) > lateKeep {
				s.forgetLate(k)
			}
		}
	}
	size := 64
	if ev.Progress != nil {
		size += len(ev.Progress.Data)
	}
	if s.lateNode[nodeID]+size > lateNodeMaxBytes {
		return
	}
	for s.lateBytes+size > lateMaxBytes && len(s.late) > 0 {
		var oldest string
		for k, l := range s.late {
			if oldest == "" || l.at.Before(s.late[oldest].at) {
				oldest = k
			}
		}
		s.forgetLate(oldest)
	}
	l := s.late[id]
	if l == nil {
		l = &lateCall{nodeID: nodeID, at: now}
		s.late[id] = l
	}
	if l.nodeID != nodeID {
		return // the first node to name the id owns it; the attach checks the node too
	}
	l.events = append(l.events, ev)
	l.bytes += size
	s.lateBytes += size
	s.lateNode[nodeID] += size
}

// forgetLate drops what was kept for id. Callers hold mu.
func (s *Service) forgetLate(id string) {
	l := s.late[id]
	if l == nil {
		return
	}
	s.lateBytes -= l.bytes
	if s.lateNode[l.nodeID] -= l.bytes; s.lateNode[l.nodeID] <= 0 {
		delete(s.lateNode, l.nodeID)
	}
	delete(s.late, id)
}

// Sender queues a command for a node's live stream: session.ErrNoStream when it
// has none, session.ErrBusy when its queue is full. A *session.Registry is one.
type Sender interface {
	Send(nodeID string, c session.Command) error
}

// Progress hands a chunk from nodeID's stream to its waiting caller. Chunks of an
// unknown or finished call, and repeats (sequence not above the last), are dropped;
// a call not pending here goes to Elsewhere.
func (s *Service) Progress(nodeID, commandID string, p Progress) {
	if !s.progress(nodeID, commandID, p) && s.cfg.Elsewhere != nil {
		s.cfg.Elsewhere(nodeID, commandID, Event{Progress: &p})
	}
}

// ProgressFrom is Progress for a chunk another replica received: never handed on.
func (s *Service) ProgressFrom(nodeID, commandID string, p Progress) {
	s.progress(nodeID, commandID, p)
}

// progress reports whether the call is pending here; a chunk of a call that is not
// is kept for an Attach.
func (s *Service) progress(nodeID, commandID string, p Progress) bool {
	c := s.callOrKeep(nodeID, commandID, Event{Progress: &p})
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished || p.Sequence <= c.lastSeq || c.queued+len(p.Data) > maxQueued {
		return true
	}
	c.lastSeq = p.Sequence
	c.queued += len(p.Data)
	c.queue = append(c.queue, Event{Progress: &p})
	c.notify()
	return true
}

// Result records nodeID's result for commandID. It reports whether the call was
// pending; either way the daemon must be acked, so that a duplicate (resent after a
// reconnect) or a result for a call this replica no longer waits for leaves its
// buffer.
func (s *Service) Result(nodeID, commandID string, r Result) bool {
	c := s.callOrKeep(nodeID, commandID, Event{Result: &r})
	if c == nil {
		if s.cfg.Elsewhere != nil {
			s.cfg.Elsewhere(nodeID, commandID, Event{Result: &r})
		}
		return false
	}
	return s.finish(c, r)
}

// ResultFrom is Result for a result another replica received: never handed on.
func (s *Service) ResultFrom(nodeID, commandID string, r Result) bool {
	c := s.callOrKeep(nodeID, commandID, Event{Result: &r})
	if c == nil {
		return false
	}
	return s.finish(c, r)
}

// finish ends c with r once (later results lose), wakes its caller, and records it.
func (s *Service) finish(c *Call, r Result) bool {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return false
	}
	c.finished = true
	c.mu.Unlock()
	s.drop(c)
	// The caller is woken after the audit entry is written, so whoever saw the result
	// can read its record.
	defer func() {
		c.mu.Lock()
		c.queue = append(c.queue, Event{Result: &r})
		c.notify()
		c.mu.Unlock()
	}()

	took := time.Since(c.started)
	s.cfg.Metrics.ToolCall(c.Tool, r.label(), took)
	details := map[string]string{
		"command_id":       c.ID,
		"tool":             c.Tool,
		"command":          c.Command,
		"security_context": c.SecurityContext,
		"exit_code":        strconv.Itoa(int(r.ExitCode)),
	}
	if r.Kind != KindNone {
		details["error_kind"] = r.Kind.String()
	}
	if r.OutputTruncated {
		details["output_truncated"] = "true"
	}
	if c.attached {
		details["attached"] = "true"
		delete(details, "command")
	}
	// The operator's request may be gone (Ctrl-C); the record must still be written.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.cfg.Store.AppendAudit(ctx, store.AuditEntry{
		At: s.cfg.Now().UTC(), TenantID: c.TenantID, Actor: c.actor, Action: "exec", NodeID: c.NodeID,
		Result: r.label(), Details: details,
	}); err != nil {
		s.cfg.Logger.Error("audit a tool call", "node", c.NodeID, "command_id", c.ID, "err", err)
	}
	s.cfg.Logger.Info("tool call finished", "node", c.NodeID, "command_id", c.ID, "tool", c.Tool,
		"result", r.label(), "exit_code", r.ExitCode, "took", took)
	return true
}

// Cancel asks the daemon to stop the call (its caller went away). The call stays
// pending: the daemon's CANCELLED result is still acked, audited and counted.
func (c *Call) Cancel() {
	c.mu.Lock()
	done := c.finished
	c.mu.Unlock()
	if done {
		return
	}
	s := c.svc
	go func() {
		// A full queue empties as the stream sends; a missing stream means the
		// daemon is reconnecting and will report the call itself.
		for range 20 {
			err := s.cfg.Sessions.Send(c.NodeID, session.Command{Kind: session.CommandCancelTool, CommandID: c.ID})
			if !errors.Is(err, session.ErrBusy) {
				if err != nil {
					s.cfg.Logger.Info("cancel not sent", "node", c.NodeID, "command_id", c.ID, "err", err)
				}
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		s.cfg.Logger.Warn("cancel not sent: the host's command queue stayed full", "node", c.NodeID, "command_id", c.ID)
	}()
}

// Release stops following an attached call without ending it (its caller left):
// what arrives for it later is kept for the next Attach.
func (c *Call) Release() {
	c.mu.Lock()
	done := c.finished
	c.mu.Unlock()
	if !done {
		c.svc.drop(c)
	}
}

func (c *Call) notify() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Next returns the call's next event, in order; the Result is the last. After the
// Result it returns io.EOF. It returns ctx's error if ctx ends first.
func (c *Call) Next(ctx context.Context) (Event, error) {
	for {
		c.mu.Lock()
		if len(c.queue) > 0 {
			ev := c.queue[0]
			c.queue = c.queue[1:]
			if ev.Progress != nil {
				c.queued -= len(ev.Progress.Data)
			} else {
				c.taken = true
			}
			c.mu.Unlock()
			return ev, nil
		}
		taken := c.taken
		c.mu.Unlock()
		if taken {
			return Event{}, io.EOF
		}
		select {
		case <-c.ready:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// Shutdown ends every pending call as KindShutdown: this replica will not see their
// results, and an operator's Exec must not hold the graceful shutdown open until its
// deadline. The calls go on on the hosts; their callers re-attach (Attach).
func (s *Service) Shutdown() {
	s.mu.Lock()
	all := make([]*Call, 0, len(s.pending))
	for _, c := range s.pending {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		s.finish(c, Result{Kind: KindShutdown, Message: "the control plane is shutting down; the command goes on on the host: attach again to follow it"})
	}
}

// Pending is how many calls are waiting for a result (for tests and shutdown logs).
func (s *Service) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

func newCommandID(rnd io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", fmt.Errorf("make command id: %w", err)
	}
	return "c-" + hex.EncodeToString(b[:]), nil
}
