// Package swarm runs many real edged daemons in one test process against one
// in-process control plane (controlplane/cptest): each daemon has its own state
// directory, is enrolled through the real enroll code with an enrollment token
// carrying the tags it is given, and runs the real agent. Tests steer single daemons
// (stop and start one, make its rotation fail, make it ignore the control plane's
// commands) and read the server's view through the admin API and the store.
//
// It is built to scale to thousands of daemons: logging is off unless asked for,
// the agents' timers are configurable (the heartbeat interval that matters is the
// server's, cptest.Options.HeartbeatInterval, which every Welcome names), and the
// daemons may share one HTTP transport instead of holding one connection each.
package swarm

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/enroll"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/internal/policy"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrInjected is what a daemon's rotation fails with after FailRotation.
var ErrInjected = errors.New("swarm: injected rotation failure")

// Options of a Swarm. The zero value is a quiet swarm with test-friendly timers.
type Options struct {
	// Logger receives every daemon's log (with a "daemon" attribute); nil discards,
	// which is what a swarm of thousands wants.
	Logger *slog.Logger
	// HeartbeatInterval is the agents' interval until a Welcome names the server's
	// (default 10s, as edged). Set the server's with cptest.Options.HeartbeatInterval.
	HeartbeatInterval time.Duration
	// MinBackoff and MaxBackoff bound reconnect delays (defaults 20ms and 500ms, so a
	// restarted control plane is found again quickly).
	MinBackoff, MaxBackoff time.Duration
	// RPCTimeout bounds the agents' unary calls and enrollment (default 10s).
	RPCTimeout time.Duration
	// EnrollPoll is how often a daemon without an identity looks again (default 1s).
	EnrollPoll time.Duration
	// EnrollConcurrency is how many enrollments run at once (default 8).
	EnrollConcurrency int
	// SharedTransport makes every daemon use one HTTP/2 client (it opens more
	// connections as stream limits require) instead of one connection each.
	SharedTransport bool
	// Policy is every daemon's local security policy (nil denies every tool call).
	Policy *policy.Policy
	// Configure, when set, adjusts each daemon's agent.Config just before it starts.
	Configure func(d *Daemon, cfg *agent.Config)
	// Name names the i-th daemon (0-based, over the swarm's life); default
	// "host-00000", "host-00001", ...
	Name func(i int) string
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = 20 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 500 * time.Millisecond
	}
	if o.RPCTimeout == 0 {
		o.RPCTimeout = 10 * time.Second
	}
	if o.EnrollConcurrency <= 0 {
		o.EnrollConcurrency = 8
	}
	if o.Name == nil {
		o.Name = func(i int) string { return fmt.Sprintf("host-%05d", i) }
	}
}

// Swarm is a set of daemons enrolled with one control plane. Its daemons stop when
// the test ends.
type Swarm struct {
	srv        *cptest.Server
	url        string
	adminToken string
	opts       Options
	base       string

	shared     *http.Client
	sharedOnce sync.Once

	throttled atomic.Int64

	mu      sync.Mutex
	daemons []*Daemon
	byNode  map[string]*Daemon
}

// New makes an empty swarm for srv; Add enrolls and starts daemons.
func New(t testing.TB, srv *cptest.Server, opts Options) *Swarm {
	t.Helper()
	opts.defaults()
	s := &Swarm{srv: srv, url: srv.URL, adminToken: srv.AdminToken, opts: opts, base: t.TempDir(), byNode: map[string]*Daemon{}}
	t.Cleanup(s.StopAll)
	return s
}

// Server is the control plane the swarm is enrolled with.
func (s *Swarm) Server() *cptest.Server { return s.srv }

// Daemons lists every daemon in the order they were added.
func (s *Swarm) Daemons() []*Daemon {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Daemon(nil), s.daemons...)
}

// Daemon is the daemon enrolled as nodeID, or nil.
func (s *Swarm) Daemon(nodeID string) *Daemon {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byNode[nodeID]
}

// Add enrolls n daemons whose enrollment tokens carry tags and starts them; it does
// not wait for them to connect (see WaitConnected).
func (s *Swarm) Add(t testing.TB, n int, tags ...string) []*Daemon {
	t.Helper()
	ds, err := s.Enroll(context.Background(), n, tags...)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	return ds
}

// Enroll enrolls n daemons (enrollment token with tags, then the real enroll flow,
// each into a fresh 0700 state directory) without starting them.
func (s *Swarm) Enroll(ctx context.Context, n int, tags ...string) ([]*Daemon, error) {
	s.mu.Lock()
	first := len(s.daemons)
	ds := make([]*Daemon, n)
	for i := range ds {
		name := s.opts.Name(first + i)
		ds[i] = &Daemon{swarm: s, Name: name, Tags: append([]string(nil), tags...),
			Dir: keystore.Open(filepath.Join(s.base, name))}
	}
	s.daemons = append(s.daemons, ds...)
	s.mu.Unlock()

	sem := make(chan struct{}, s.opts.EnrollConcurrency)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = s.enroll(ctx, d)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s.mu.Lock()
	for _, d := range ds {
		s.byNode[d.NodeID] = d
	}
	s.mu.Unlock()
	return ds, nil
}

func (s *Swarm) enroll(ctx context.Context, d *Daemon) error {
	resp, err := s.Admin().CreateEnrollmentToken(ctx, connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{
		Tags: d.Tags, Ttl: durationpb.New(15 * time.Minute), Name: d.Name,
	}))
	if err != nil {
		return fmt.Errorf("swarm: enrollment token for %s: %w", d.Name, err)
	}
	if err := os.Mkdir(d.Dir.Path(), keystore.DirMode); err != nil {
		return fmt.Errorf("swarm: state dir for %s: %w", d.Name, err)
	}
	for {
		res, err := enroll.Enroll(ctx, enroll.Options{
			Token: resp.Msg.GetToken(), StateDir: d.Dir.Path(), Name: d.Name, Timeout: s.opts.RPCTimeout,
		})
		// Every daemon here comes from 127.0.0.1, one source to the control plane's
		// per-source challenge limit (50/s, burst 200): past the burst, wait for it.
		// A refused challenge leaves the token unspent and the state dir empty.
		if errors.Is(err, enroll.ErrRejected) && strings.Contains(err.Error(), "rate limited") {
			s.throttled.Add(1)
			select {
			case <-ctx.Done():
				return fmt.Errorf("swarm: enroll %s: %w (%v)", d.Name, ctx.Err(), err)
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("swarm: enroll %s: %w", d.Name, err)
		}
		d.NodeID = res.NodeID
		return nil
	}
}

// Throttled counts enrollments the control plane's rate limit made wait and retry.
func (s *Swarm) Throttled() int64 { return s.throttled.Load() }

func (s *Swarm) httpClient(id *keystore.Identity) *http.Client {
	if !s.opts.SharedTransport {
		return cpclient.NewHTTPClient(id.CA)
	}
	// Every daemon trusts the same CA, so one client serves them all. Agents call
	// CloseIdleConnections when they stop serving; on a shared client that only
	// drops idle connections, never another daemon's live stream.
	s.sharedOnce.Do(func() { s.shared = cpclient.NewHTTPClient(id.CA) })
	return s.shared
}

// WaitConnected waits until every running daemon is Connected.
func (s *Swarm) WaitConnected(ctx context.Context) error {
	for _, d := range s.Daemons() {
		if !d.Running() {
			continue
		}
		if err := d.WaitConnected(ctx); err != nil {
			return err
		}
	}
	return nil
}

// StopAll stops every running daemon (in parallel) and waits for them.
func (s *Swarm) StopAll() {
	var wg sync.WaitGroup
	for _, d := range s.Daemons() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = d.Stop()
		}()
	}
	wg.Wait()
}

// Daemon is one simulated host: a state directory and, while running, an agent.
type Daemon struct {
	swarm *Swarm
	// Name is the host's display name, NodeID what the control plane made it.
	Name   string
	NodeID string
	Tags   []string
	Dir    *keystore.Dir

	// failAt is the rotation.Step at which rotations fail (0: they do not).
	failAt atomic.Int32
	// ignore drops every command (rotate, refresh, tool calls) the stream delivers.
	ignore  atomic.Bool
	ignored atomic.Int64

	mu     sync.Mutex
	agent  *agent.Agent
	lock   *keystore.DaemonLock
	cancel context.CancelFunc
	done   chan error
	last   agent.Snapshot
}

// Start starts the daemon as `edged run` would: the daemon lock, then the agent.
func (d *Daemon) Start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.agent != nil {
		return fmt.Errorf("swarm: %s is already running", d.Name)
	}
	lock, err := d.Dir.LockDaemon()
	if err != nil {
		return fmt.Errorf("swarm: %s: %w", d.Name, err)
	}
	o := d.swarm.opts
	cfg := agent.Config{
		Dir:               d.Dir,
		Logger:            o.Logger.With("daemon", d.Name),
		HeartbeatInterval: o.HeartbeatInterval,
		MinBackoff:        o.MinBackoff,
		MaxBackoff:        o.MaxBackoff,
		EnrollPoll:        o.EnrollPoll,
		RPCTimeout:        o.RPCTimeout,
		Version:           "swarm",
		HTTPClient:        d.swarm.httpClient,
		ClientOptions:     []connect.ClientOption{connect.WithInterceptors(commandFilter{d})},
		RotationFault:     d.rotationFault,
		Policy:            o.Policy,
	}
	if o.Configure != nil {
		o.Configure(d, &cfg)
	}
	a := agent.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	d.agent, d.lock, d.cancel, d.done = a, lock, cancel, done
	return nil
}

// Stop stops the daemon (its stream ends as on a clean shutdown) and waits for it.
// It returns what the agent's Run returned; stopping a stopped daemon is a no-op.
func (d *Daemon) Stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.agent == nil {
		return nil
	}
	d.cancel()
	var err error
	select {
	case err = <-d.done:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("swarm: %s did not stop within 10s", d.Name)
	}
	d.last = d.agent.Status()
	d.last.Status = agent.StatusDisconnected
	d.last.SessionID = ""
	d.last.LastError = "stopped"
	_ = d.lock.Release()
	d.agent, d.lock, d.cancel, d.done = nil, nil, nil, nil
	return err
}

// Running says whether the daemon's agent is running.
func (d *Daemon) Running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.agent != nil
}

// Status is the agent's snapshot (what `aegis edge status` shows); a stopped daemon
// reports its last snapshot as Disconnected with LastError "stopped".
func (d *Daemon) Status() agent.Snapshot {
	d.mu.Lock()
	a, last := d.agent, d.last
	d.mu.Unlock()
	if a == nil {
		return last
	}
	return a.Status()
}

// Agent is the running agent (nil when stopped), for what the swarm does not wrap.
func (d *Daemon) Agent() *agent.Agent {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.agent
}

// WaitConnected waits until the daemon is Connected.
func (d *Daemon) WaitConnected(ctx context.Context) error {
	return d.WaitStatus(ctx, func(s agent.Snapshot) bool { return s.Status == agent.StatusConnected })
}

// WaitStatus polls the daemon's status until cond holds or ctx ends.
func (d *Daemon) WaitStatus(ctx context.Context, cond func(agent.Snapshot) bool) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s := d.Status()
		if cond(s) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("swarm: %s (%s): status %s, last error %q: %w", d.Name, d.NodeID, s.Status, s.LastError, ctx.Err())
		case <-t.C:
		}
	}
}

// FailRotation makes the daemon's rotations fail at step (rotation.StepNextKey:
// before anything reaches the control plane, so the host keeps its old key and the
// server never commits); 0 makes them succeed again. It applies to the running agent
// and to later starts.
func (d *Daemon) FailRotation(step rotation.Step) { d.failAt.Store(int32(step)) }

func (d *Daemon) rotationFault(s rotation.Step) error {
	if at := d.failAt.Load(); at != 0 && rotation.Step(at) == s {
		return fmt.Errorf("%w at %s", ErrInjected, s)
	}
	return nil
}

// IgnoreCommands makes the daemon drop every command its stream delivers (rotate,
// token refresh, tool calls) as a wedged daemon would, while it keeps heartbeating.
func (d *Daemon) IgnoreCommands(on bool) { d.ignore.Store(on) }

// Ignored counts the commands dropped since the daemon was made.
func (d *Daemon) Ignored() int64 { return d.ignored.Load() }

// KeyFingerprint is the fingerprint of node.key in the state directory.
func (d *Daemon) KeyFingerprint() (string, error) {
	key, err := d.Dir.ReadKey()
	if err != nil {
		return "", err
	}
	return fingerprint.Of(key.Public().(ed25519.PublicKey)), nil
}

// ServerKeyFingerprint is the fingerprint of the key the control plane holds for
// the daemon.
func (d *Daemon) ServerKeyFingerprint(ctx context.Context) (string, error) {
	dm, err := d.swarm.srv.Store.GetDaemon(ctx, d.NodeID)
	if err != nil {
		return "", err
	}
	return fingerprint.Of(dm.PublicKey), nil
}

// commandFilter sits on the daemon's ConnectEdge stream and drops commands while
// the daemon ignores them; everything else (Welcome, acks, Disconnect) passes.
type commandFilter struct{ d *Daemon }

func (f commandFilter) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (f commandFilter) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		return &filteredConn{StreamingClientConn: next(ctx, spec), d: f.d}
	}
}

func (f commandFilter) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

type filteredConn struct {
	connect.StreamingClientConn
	d *Daemon
}

func (c *filteredConn) Receive(msg any) error {
	for {
		if err := c.StreamingClientConn.Receive(msg); err != nil {
			return err
		}
		cmd, ok := msg.(*edgev1.EdgeCommand)
		if !ok || !c.d.ignore.Load() {
			return nil
		}
		switch cmd.GetCommand().(type) {
		case *edgev1.EdgeCommand_RotateKey, *edgev1.EdgeCommand_RefreshToken, *edgev1.EdgeCommand_InvokeTool, *edgev1.EdgeCommand_CancelTool:
			c.d.ignored.Add(1)
			continue
		}
		return nil
	}
}
