package fleet

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/selector"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
)

const (
	// DefaultLeaseDuration is how long a driver's lease lasts unrenewed: how long
	// a run whose replica died waits before another replica takes it over.
	DefaultLeaseDuration = 15 * time.Second
	// DefaultResumeGrace is how long a resumed driver waits for a host's stream
	// to come back before calling the host disconnected: after a restart every
	// daemon reconnects within seconds (Disconnect{SHUTDOWN} says 1-3s).
	DefaultResumeGrace = 15 * time.Second
	// watchPoll bounds how long a watcher waits before looking at the store again
	// for events written by another replica.
	watchPoll = time.Second
)

// ErrNoHosts: the selector matched nothing the caller may see.
var ErrNoHosts = fmt.Errorf("%w: target selects no hosts", ErrInvalid)

// ErrShuttingDown ends a watch when this replica stops: the run goes on (here after
// a restart, or on another replica), and the watcher re-attaches after the last
// sequence it saw.
var ErrShuttingDown = errors.New("the control plane is shutting down: watch again to re-attach")

// Config wires an Engine.
type Config struct {
	Store store.Store
	// Sessions reaches the hosts' streams: on this replica only (a
	// *session.Registry) or on every replica sharing the store.
	Sessions  Streams
	Presence  *session.Presence
	ToolCalls *toolcall.Service
	Metrics   *metrics.Metrics
	// Now is the protocol clock, for the times recorded and the leases; waits use
	// timers.
	Now    func() time.Time
	Rand   io.Reader
	Logger *slog.Logger
	// ReplicaID owns the leases this process takes.
	ReplicaID string
	// MaxConcurrency caps the hosts in flight in one run; 0 means
	// DefaultMaxConcurrency.
	MaxConcurrency int
	// LeaseDuration: 0 means DefaultLeaseDuration.
	LeaseDuration time.Duration
	// ResumeGrace: 0 means DefaultResumeGrace.
	ResumeGrace time.Duration
}

// Streams is how the engine finds and commands a host's live stream.
type Streams interface {
	// Get reports whether nodeID has a live stream (the handle may be nil for a
	// stream another replica holds).
	Get(nodeID string) (*session.Handle, bool)
	// Send queues a command for the stream: session.ErrNoStream if there is none,
	// session.ErrBusy if its queue is full.
	Send(nodeID string, c session.Command) error
}

// HostRef names a host in a plan.
type HostRef struct {
	NodeID string `json:"node_id"`
	Name   string `json:"name"`
}

// Wave is one group of hosts started together.
type Wave struct {
	Number int       `json:"number"`
	Hosts  []HostRef `json:"hosts"`
}

// Plan is a resolved run: the hosts, in waves.
type Plan struct {
	Target         string `json:"target"`
	TotalHosts     int    `json:"total_hosts"`
	Waves          []Wave `json:"waves"`
	MaxConcurrency int    `json:"max_concurrency"`
}

// Counts summarizes a run's hosts.
type Counts struct {
	Total      int `json:"total"`
	Succeeded  int `json:"succeeded"`
	Failed     int `json:"failed"`
	Skipped    int `json:"skipped"`
	NotStarted int `json:"not_started"`
}

// Run is a fleet run as operators see it.
type Run struct {
	ID           string    `json:"id"`
	TenantID     string    `json:"tenant_id"`
	Spec         Spec      `json:"spec"`
	State        string    `json:"state"` // store.FleetRun*
	Counts       Counts    `json:"counts"`
	CreatedBy    string    `json:"created_by"`
	CreatedAt    time.Time `json:"created_at"`
	FinishedAt   time.Time `json:"finished_at"`
	HaltedReason string    `json:"halted_reason"`
}

// Engine plans, starts, drives and reports fleet runs. Safe for concurrent use.
type Engine struct {
	cfg Config

	ctx    context.Context // ends at Stop; every driver runs under it
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	drivers map[string]*driver // runs this replica drives now
	// inactive takes a driven run off the active gauge, once: when its finish is
	// about to be committed or when its driver stops, whichever comes first.
	inactive map[string]func()
	changed  map[string]chan struct{}
	stopped  bool
}

// New returns an Engine; call Run to resume and watch for runs, Stop to end.
func New(cfg Config) *Engine {
	if cfg.MaxConcurrency <= 0 {
		cfg.MaxConcurrency = DefaultMaxConcurrency
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.ResumeGrace <= 0 {
		cfg.ResumeGrace = DefaultResumeGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Engine{cfg: cfg, ctx: ctx, cancel: cancel, drivers: map[string]*driver{}, inactive: map[string]func(){}, changed: map[string]chan struct{}{}}
}

// resolve parses and normalizes spec and resolves its target to the hosts p may
// see, ordered by name then node id, and cut into waves.
func (e *Engine) resolve(ctx context.Context, p apitoken.Principal, spec Spec) (Spec, Plan, []store.Daemon, error) {
	spec, err := spec.normalize()
	if err != nil {
		return Spec{}, Plan{}, nil, err
	}
	text := strings.TrimSpace(spec.Target)
	if text == "" {
		return Spec{}, Plan{}, nil, fmt.Errorf("%w: a target is required (say all)", ErrInvalid)
	}
	sel, err := selector.Parse(text)
	if err != nil {
		return Spec{}, Plan{}, nil, fmt.Errorf("%w: target %v", ErrInvalid, err)
	}
	spec.Target = sel.String()
	ds, err := e.cfg.Store.ListDaemons(ctx, store.DaemonFilter{TenantID: p.Scope()})
	if err != nil {
		return Spec{}, Plan{}, nil, fmt.Errorf("list daemons: %w", err)
	}
	var hosts []store.Daemon
	now := e.cfg.Now()
	for _, d := range ds {
		if sel.Matches(keypolicy.SelectorHost(d, now)) {
			hosts = append(hosts, d)
		}
	}
	if len(hosts) == 0 {
		return Spec{}, Plan{}, nil, ErrNoHosts
	}
	slices.SortFunc(hosts, func(a, b store.Daemon) int {
		return cmp.Or(cmp.Compare(a.DisplayName, b.DisplayName), cmp.Compare(a.NodeID, b.NodeID))
	})
	refs := make([]HostRef, len(hosts))
	for i, d := range hosts {
		refs[i] = HostRef{NodeID: d.NodeID, Name: d.DisplayName}
	}
	return spec, e.plan(spec, refs), hosts, nil
}

// plan cuts hosts (in order) into waves. A wave never exceeds the batch, and a
// parallel run's "batch" is the server's cap, so no run has more hosts in flight.
func (e *Engine) plan(spec Spec, hosts []HostRef) Plan {
	batch := spec.Batch
	if spec.Mode == ModeParallel || batch > e.cfg.MaxConcurrency {
		batch = e.cfg.MaxConcurrency
	}
	batch = min(batch, len(hosts))
	p := Plan{Target: spec.Target, TotalHosts: len(hosts), MaxConcurrency: batch}
	for i := 0; i < len(hosts); i += batch {
		p.Waves = append(p.Waves, Wave{Number: len(p.Waves) + 1, Hosts: hosts[i:min(i+batch, len(hosts))]})
	}
	return p
}

// Plan resolves spec for p and changes nothing (--dry-run).
func (e *Engine) Plan(ctx context.Context, p apitoken.Principal, spec Spec) (Spec, Plan, error) {
	spec, plan, _, err := e.resolve(ctx, p, spec)
	return spec, plan, err
}

// Start resolves spec and, in one transaction, records the run (leased to this
// replica), its hosts (pending, with their wave) and its run_started event; then
// this replica starts driving it. Nothing is stored when anything is refused.
func (e *Engine) Start(ctx context.Context, p apitoken.Principal, spec Spec) (Run, Plan, error) {
	if !p.CanWrite() {
		return Run{}, Plan{}, fmt.Errorf("%w: role %q cannot start fleet runs", apitoken.ErrPermissionDenied, p.Role)
	}
	spec, plan, _, err := e.resolve(ctx, p, spec)
	if err != nil {
		return Run{}, Plan{}, err
	}
	id, err := newRunID(e.cfg.Rand)
	if err != nil {
		return Run{}, Plan{}, err
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return Run{}, Plan{}, fmt.Errorf("encode spec: %w", err)
	}
	now := e.cfg.Now().UTC()
	rec := store.FleetRun{
		ID: id, TenantID: p.TenantID, Action: string(spec.Action), Target: spec.Target, Spec: string(specJSON),
		State: store.FleetRunRunning, CreatedBy: p.TokenID, CreatedAt: now,
		LeaseOwner: e.cfg.ReplicaID, LeaseUntil: now.Add(e.cfg.LeaseDuration),
	}
	var hosts []store.FleetRunHost
	for _, w := range plan.Waves {
		for _, h := range w.Hosts {
			hosts = append(hosts, store.FleetRunHost{
				RunID: id, NodeID: h.NodeID, Name: h.Name, Wave: w.Number, Position: len(hosts), State: store.FleetHostPending,
			})
		}
	}
	run := runOf(rec, spec, hosts)
	started, err := encodeEvent(id, now, RunStarted{Run: run, Plan: plan})
	if err != nil {
		return Run{}, Plan{}, err
	}
	err = e.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.InsertFleetRun(ctx, rec); err != nil {
			return err
		}
		if err := tx.InsertFleetRunHosts(ctx, id, hosts); err != nil {
			return err
		}
		if _, err := tx.AppendFleetRunEvent(ctx, started); err != nil {
			return err
		}
		_, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: p.TenantID, Actor: "op:" + p.TokenID, Action: "fleet_run_start", Result: "ok",
			Details: map[string]string{"fleet_run_id": id, "action": string(spec.Action), "target": spec.Target, "hosts": fmt.Sprint(len(hosts))},
		})
		return err
	})
	if err != nil {
		return Run{}, Plan{}, fmt.Errorf("start fleet run: %w", err)
	}
	e.cfg.Logger.Info("fleet run started", "run", id, "action", spec.Action, "target", spec.Target, "hosts", len(hosts), "waves", len(plan.Waves), "operator", p.TokenID)
	e.launch(rec, false)
	return run, plan, nil
}

// Get returns a run p may see, its plan and its hosts in plan order.
func (e *Engine) Get(ctx context.Context, p apitoken.Principal, id string) (Run, Plan, []store.FleetRunHost, error) {
	rec, spec, err := e.load(ctx, p, id)
	if err != nil {
		return Run{}, Plan{}, nil, err
	}
	hosts, err := e.cfg.Store.ListFleetRunHosts(ctx, id)
	if err != nil {
		return Run{}, Plan{}, nil, err
	}
	return runOf(rec, spec, hosts), planOf(spec, hosts), hosts, nil
}

// List returns the runs p may see, newest first.
func (e *Engine) List(ctx context.Context, p apitoken.Principal) ([]Run, error) {
	recs, err := e.cfg.Store.ListFleetRuns(ctx, store.FleetRunFilter{TenantID: p.Scope()})
	if err != nil {
		return nil, err
	}
	out := make([]Run, 0, len(recs))
	for _, rec := range recs {
		spec, err := decodeSpec(rec)
		if err != nil {
			return nil, err
		}
		hosts, err := e.cfg.Store.ListFleetRunHosts(ctx, rec.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, runOf(rec, spec, hosts))
	}
	return out, nil
}

// Cancel asks a running run to stop: no further host starts, hosts in flight
// finish, the rest are not started (reason "cancelled"), and the run ends
// CANCELLED. It returns the run as it is now (still running until its driver ends
// it); cancelling a finished run is a no-op that returns it.
func (e *Engine) Cancel(ctx context.Context, p apitoken.Principal, id string) (Run, error) {
	if !p.CanWrite() {
		return Run{}, fmt.Errorf("%w: role %q cannot cancel fleet runs", apitoken.ErrPermissionDenied, p.Role)
	}
	rec, _, err := e.load(ctx, p, id)
	if err != nil {
		return Run{}, err
	}
	now := e.cfg.Now().UTC()
	err = e.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.RequestFleetRunCancel(ctx, id, now); err != nil {
			return err
		}
		_, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: rec.TenantID, Actor: "op:" + p.TokenID, Action: "fleet_run_cancel", Result: "ok",
			Details: map[string]string{"fleet_run_id": id},
		})
		return err
	})
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return Run{}, err
	}
	if err == nil {
		e.cfg.Logger.Info("fleet run cancel requested", "run", id, "operator", p.TokenID)
		e.mu.Lock()
		d := e.drivers[id]
		e.mu.Unlock()
		if d != nil {
			d.cancelRequested()
		}
	}
	run, _, _, err := e.Get(ctx, p, id)
	return run, err
}

// Watch sends the run's events with sequence > after, in order, then follows the
// run until its run_finished event has been sent. A finished run is pure replay.
// Events written by another replica (or before a restart) are found in the store.
func (e *Engine) Watch(ctx context.Context, p apitoken.Principal, id string, after uint64, send func(Event) error) error {
	if _, _, err := e.load(ctx, p, id); err != nil {
		return err
	}
	for {
		// Subscribed before reading, so an event appended after the read wakes us.
		changed := e.subscribe(id)
		recs, err := e.cfg.Store.ListFleetRunEvents(ctx, id, after)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			ev, err := decodeEvent(rec)
			if err != nil {
				return err
			}
			if err := send(ev); err != nil {
				return err
			}
			after = ev.Sequence
			if ev.RunFinished != nil {
				return nil
			}
		}
		if len(recs) == 0 {
			// A finished run must not hold a watcher forever. Its last event commits
			// with its state, but it may have committed between the read of the
			// events above and this read of the state: read the events once more
			// before ending, or the watcher misses run_finished.
			rec, err := e.cfg.Store.GetFleetRun(ctx, id)
			if err != nil {
				return err
			}
			if rec.State != store.FleetRunRunning {
				recs, err := e.cfg.Store.ListFleetRunEvents(ctx, id, after)
				if err != nil {
					return err
				}
				for _, rec := range recs {
					ev, err := decodeEvent(rec)
					if err != nil {
						return err
					}
					if err := send(ev); err != nil {
						return err
					}
				}
				return nil
			}
		}
		t := time.NewTimer(watchPoll)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-e.ctx.Done():
			// Stop ends every watch, or one would hold the graceful shutdown open
			// until its run finished.
			t.Stop()
			return ErrShuttingDown
		}
		t.Stop()
	}
}

// load reads a run p may see; another tenant's run is store.ErrNotFound.
func (e *Engine) load(ctx context.Context, p apitoken.Principal, id string) (store.FleetRun, Spec, error) {
	rec, err := e.cfg.Store.GetFleetRun(ctx, id)
	if err == nil && !p.Sees(rec.TenantID) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.FleetRun{}, Spec{}, fmt.Errorf("fleet run %q: %w", id, err)
	}
	spec, err := decodeSpec(rec)
	return rec, spec, err
}

func (e *Engine) subscribe(id string) <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	ch := e.changed[id]
	if ch == nil {
		ch = make(chan struct{})
		e.changed[id] = ch
	}
	return ch
}

// notify wakes the run's watchers on this replica.
func (e *Engine) notify(id string) {
	e.mu.Lock()
	ch := e.changed[id]
	delete(e.changed, id)
	e.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// Run resumes the running runs whose lease is free or expired (this replica's own
// after a restart, another's whose replica died), now and every third of a lease,
// until ctx ends or Stop is called; then it waits for its drivers to stop.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.LeaseDuration / 3)
	defer t.Stop()
	for {
		e.resume(ctx)
		select {
		case <-ctx.Done():
			e.Stop()
			return
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (e *Engine) resume(ctx context.Context) {
	recs, err := e.cfg.Store.ListFleetRuns(ctx, store.FleetRunFilter{State: store.FleetRunRunning})
	if err != nil {
		if ctx.Err() == nil {
			e.cfg.Logger.Warn("list running fleet runs", "err", err)
		}
		return
	}
	for _, rec := range recs {
		e.mu.Lock()
		_, mine := e.drivers[rec.ID]
		e.mu.Unlock()
		if mine {
			continue
		}
		now := e.cfg.Now().UTC()
		err := e.cfg.Store.AcquireFleetRunLease(ctx, rec.ID, e.cfg.ReplicaID, now, now.Add(e.cfg.LeaseDuration))
		if errors.Is(err, store.ErrConflict) {
			continue // another replica drives it, or it just finished
		}
		if err != nil {
			e.cfg.Logger.Warn("lease fleet run", "run", rec.ID, "err", err)
			continue
		}
		e.cfg.Logger.Info("fleet run resumed", "run", rec.ID, "previous_owner", rec.LeaseOwner)
		e.launch(rec, true)
	}
}

// Stop stops every driver (their runs stay running in the store, for whichever
// replica resumes them) and waits for them. Call it before the streams are
// closed, so no host is judged disconnected because this replica is going away.
func (e *Engine) Stop() {
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
}

// launch starts driving rec on this replica, which holds its lease.
func (e *Engine) launch(rec store.FleetRun, resumed bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || e.drivers[rec.ID] != nil {
		return
	}
	ctx, cancel := context.WithCancel(e.ctx)
	d := &driver{e: e, id: rec.ID, ctx: ctx, stop: cancel, resumed: resumed, cancelled: make(chan struct{})}
	e.drivers[rec.ID] = d
	e.wg.Add(1)
	e.cfg.Metrics.FleetRunsActive(1)
	e.inactive[rec.ID] = sync.OnceFunc(func() { e.cfg.Metrics.FleetRunsActive(-1) })
	go func() {
		defer e.wg.Done()
		defer e.runEnding(rec.ID)
		defer cancel()
		d.run()
		e.mu.Lock()
		delete(e.drivers, rec.ID)
		e.mu.Unlock()
	}()
}

// runEnding takes run id off the active gauge (once). The driver calls it right
// before committing run_finished, so a watcher that has seen the run finish never
// scrapes it as still active.
func (e *Engine) runEnding(id string) {
	e.mu.Lock()
	f := e.inactive[id]
	delete(e.inactive, id)
	e.mu.Unlock()
	if f != nil {
		f()
	}
}

func decodeSpec(rec store.FleetRun) (Spec, error) {
	var spec Spec
	if err := json.Unmarshal([]byte(rec.Spec), &spec); err != nil {
		return Spec{}, fmt.Errorf("fleet run %s: decode spec: %w", rec.ID, err)
	}
	return spec, nil
}

func countsOf(hosts []store.FleetRunHost) Counts {
	c := Counts{Total: len(hosts)}
	for _, h := range hosts {
		switch h.State {
		case store.FleetHostSucceeded:
			c.Succeeded++
		case store.FleetHostFailed:
			c.Failed++
		case store.FleetHostSkipped:
			c.Skipped++
		case store.FleetHostNotStarted:
			c.NotStarted++
		}
	}
	return c
}

func runOf(rec store.FleetRun, spec Spec, hosts []store.FleetRunHost) Run {
	return Run{
		ID: rec.ID, TenantID: rec.TenantID, Spec: spec, State: rec.State, Counts: countsOf(hosts),
		CreatedBy: rec.CreatedBy, CreatedAt: rec.CreatedAt, FinishedAt: rec.FinishedAt, HaltedReason: rec.HaltedReason,
	}
}

// planOf rebuilds a stored run's plan from its hosts.
func planOf(spec Spec, hosts []store.FleetRunHost) Plan {
	p := Plan{Target: spec.Target, TotalHosts: len(hosts)}
	for _, h := range hosts {
		if len(p.Waves) == 0 || p.Waves[len(p.Waves)-1].Number != h.Wave {
			p.Waves = append(p.Waves, Wave{Number: h.Wave})
		}
		w := &p.Waves[len(p.Waves)-1]
		w.Hosts = append(w.Hosts, HostRef{NodeID: h.NodeID, Name: h.Name})
		p.MaxConcurrency = max(p.MaxConcurrency, len(w.Hosts))
	}
	return p
}

func newRunID(rnd io.Reader) (string, error) {
	var b [8]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", fmt.Errorf("make fleet run id: %w", err)
	}
	return "fr-" + hex.EncodeToString(b[:]), nil
}
