package loadtest

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"path"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// daemons runs the real edged agent for each host in this process.
type daemons struct {
	agents []*agent.Agent
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// daemonOptions say how the in-process daemons reach the control plane.
type daemonOptions struct {
	// Shared, when set, is one HTTP/2 client for every daemon (the agents open
	// connections as stream limits require): cheap for the tool, but the control
	// plane then holds a few connections, not one per host. Nil gives each daemon a
	// client and connection of its own trusting CA, as a real fleet has.
	Shared *http.Client
	CA     *x509.Certificate
	// Calls, when set, counts every request the daemons send, by procedure.
	Calls *callCounter
	// FastBackoff makes reconnects quick (50ms to 2s) for scenarios that are not
	// about reconnecting; otherwise the agents keep edged's defaults.
	FastBackoff bool
	// Ramp, when positive, starts that many daemons per second instead of all at
	// once, as a fleet's hosts come up over time.
	Ramp float64
}

func startDaemons(hosts []*host, o daemonOptions) (*daemons, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ds := &daemons{cancel: cancel}
	quiet := slog.New(slog.DiscardHandler)
	began := time.Now()
	for i, h := range hosts {
		if o.Ramp > 0 {
			if wait := time.Until(began.Add(time.Duration(float64(i) / o.Ramp * float64(time.Second)))); wait > 0 {
				time.Sleep(wait)
			}
		}
		// No daemon lock: it keeps a file open per host, and 10,000 of them beside
		// 10,000 connections exceed the usual 20,000 open files. The tool made these
		// state directories and is their only user.
		hc := o.Shared
		if hc == nil {
			hc = cpclient.NewHTTPClient(o.CA)
		}
		if o.Calls != nil {
			hc = o.Calls.wrap(hc)
		}
		cfg := agent.Config{
			Dir: h.Dir, Logger: quiet, Version: "aegis-loadtest",
			HTTPClient: func(*keystore.Identity) *http.Client { return hc },
		}
		if o.FastBackoff {
			cfg.MinBackoff, cfg.MaxBackoff = 50*time.Millisecond, 2*time.Second
		}
		a := agent.New(cfg)
		ds.agents = append(ds.agents, a)
		ds.wg.Add(1)
		go func() {
			defer ds.wg.Done()
			_ = a.Run(ctx)
		}()
	}
	return ds, nil
}

// callCounter counts the daemons' requests by procedure (the last path element:
// ConnectEdge, Challenge, Attest, ...), including those that failed to connect, and
// apart those whose dial failed ("ConnectEdge unreachable").
type callCounter struct {
	mu sync.Mutex
	n  map[string]int64
}

func newCallCounter() *callCounter { return &callCounter{n: map[string]int64{}} }

func (c *callCounter) wrap(hc *http.Client) *http.Client {
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	out := *hc
	out.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		proc := path.Base(r.URL.Path)
		resp, err := next.RoundTrip(r)
		c.mu.Lock()
		c.n[proc]++
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			// Nothing listened: the control plane was down, and never saw it.
			c.n[proc+" unreachable"]++
		}
		c.mu.Unlock()
		return resp, err
	})
	return &out
}

// snapshot returns the counts so far.
func (c *callCounter) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (ds *daemons) stop() {
	ds.cancel()
	ds.wg.Wait()
}

// connected counts agents whose stream is up.
func (ds *daemons) connected() int {
	n := 0
	for _, a := range ds.agents {
		if a.Status().Status == agent.StatusConnected {
			n++
		}
	}
	return n
}

func (ds *daemons) waitConnected(ctx context.Context, p *progress) error {
	stop := p.every(time.Second, func() string {
		return fmt.Sprintf("connecting: %d of %d daemons Connected", ds.connected(), len(ds.agents))
	})
	defer stop()
	if err := waitFor(ctx, 0, func() bool { return ds.connected() == len(ds.agents) }); err != nil {
		return fmt.Errorf("only %d of %d daemons Connected: %w", ds.connected(), len(ds.agents), err)
	}
	return nil
}

// fleetOutcome is what the fleet scenario learned from the run's events.
type fleetOutcome struct {
	final    *edgev1.GetFleetRunResponse
	waves    int
	results  map[string]int // node -> result events seen
	seconds  float64
	reattach int
}

// runFleet starts a keys.rotate run over tag in waves of batch and follows it to the
// end, re-attaching to the watch if it breaks.
func runFleet(ctx context.Context, cp *controlPlane, tag string, batch int, deadline time.Duration, p *progress) (fleetOutcome, error) {
	admin := cp.Admin()
	spec := &edgev1.FleetRunSpec{
		Action: edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE, Target: "tags=AnyOf(" + tag + ")",
		Mode: edgev1.FleetMode_FLEET_MODE_ROLLING, Batch: int32(batch),
		OnError: edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE,
	}
	spec.Deadline = durationOf(deadline)
	start := time.Now()
	started, err := admin.StartFleetRun(ctx, connect.NewRequest(&edgev1.StartFleetRunRequest{Spec: spec}))
	if err != nil {
		return fleetOutcome{}, fmt.Errorf("start the fleet run: %w", err)
	}
	id := started.Msg.GetRun().GetId()
	out := fleetOutcome{results: map[string]int{}}
	total := len(started.Msg.GetPlan().GetWaves())
	var last uint64
	for finished := false; !finished; {
		stream, err := admin.WatchFleetRun(ctx, connect.NewRequest(&edgev1.WatchFleetRunRequest{RunId: id, AfterSequence: last}))
		if err != nil {
			return out, fmt.Errorf("watch fleet run %s: %w", id, err)
		}
		for stream.Receive() {
			ev := stream.Msg().GetEvent()
			last = ev.GetSequence()
			switch e := ev.GetEvent().(type) {
			case *edgev1.FleetEvent_WaveStarted:
				out.waves++
				p.say("[wave %d of %d] %.1fs", out.waves, total, time.Since(start).Seconds())
			case *edgev1.FleetEvent_HostResult:
				out.results[e.HostResult.GetNodeId()]++
			case *edgev1.FleetEvent_RunFinished:
				finished = true
			}
		}
		err = stream.Err()
		_ = stream.Close()
		if !finished {
			if err != nil && connect.CodeOf(err) != connect.CodeUnavailable && !errors.Is(err, context.DeadlineExceeded) {
				return out, fmt.Errorf("watch fleet run %s: %w", id, err)
			}
			out.reattach++
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
		}
	}
	out.seconds = time.Since(start).Seconds()
	got, err := admin.GetFleetRun(ctx, connect.NewRequest(&edgev1.GetFleetRunRequest{RunId: id}))
	if err != nil {
		return out, fmt.Errorf("get fleet run %s: %w", id, err)
	}
	out.final = got.Msg
	return out, nil
}

// keyFingerprints reads each host's node.key fingerprint from its state directory.
func keyFingerprints(hosts []*host) (map[string]string, error) {
	out := make(map[string]string, len(hosts))
	for _, h := range hosts {
		k, err := h.Dir.ReadKey()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
		out[h.NodeID] = fingerprint.Of(k.Public().(ed25519.PublicKey))
	}
	return out, nil
}
