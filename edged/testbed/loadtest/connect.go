package loadtest

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/internal/agent"
)

// The connection scenarios: every host's real agent runs in this process with a
// client (and so a TCP and TLS connection) of its own, as a real fleet has, so the
// control plane holds one connection per daemon and is measured alone.

// fleetUp is the state after every daemon first connected.
type fleetUp struct {
	ds    *daemons
	calls *callCounter
}

func connectAll(ctx context.Context, s settings, cp *controlPlane, hosts []*host, p *progress) (*fleetUp, error) {
	calls := newCallCounter()
	if s.ramp > 0 {
		p.say("starting %d daemons, %.0f per second", len(hosts), s.ramp)
	}
	ds, err := startDaemons(hosts, daemonOptions{CA: cp.CA, Calls: calls, Ramp: s.ramp})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute+time.Duration(float64(len(hosts))/max(s.ramp, 50)*float64(time.Second)))
	defer cancel()
	if err := ds.waitConnected(wctx, p); err != nil {
		ds.stop()
		return nil, err
	}
	return &fleetUp{ds: ds, calls: calls}, nil
}

// steady measures the connected fleet over d: heartbeats validated per second and
// the control plane's CPU per heartbeat (both from its /metrics), its RSS and heap.
type steadyState struct {
	seconds       float64
	heartbeats    float64
	cpuSeconds    float64
	rss, heap     float64
	stack         float64
	goroutines    float64
	connectedSeen int
}

func measureSteady(ctx context.Context, cp *controlPlane, ds *daemons, d time.Duration) (steadyState, error) {
	m0, err := cp.Metrics(ctx)
	if err != nil {
		return steadyState{}, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return steadyState{}, ctx.Err()
	case <-time.After(d):
	}
	m1, err := cp.Metrics(ctx)
	if err != nil {
		return steadyState{}, err
	}
	st := steadyState{
		seconds:    time.Since(t0).Seconds(),
		heartbeats: m1.get("aegis_edge_heartbeats_total") - m0.get("aegis_edge_heartbeats_total"),
		cpuSeconds: m1.get("process_cpu_seconds_total") - m0.get("process_cpu_seconds_total"),
		heap:       m1.get("go_memstats_heap_inuse_bytes"),
		stack:      m1.get("go_memstats_stack_inuse_bytes"),
		goroutines: m1.get("go_goroutines"),
	}
	if st.rss, err = cp.RSS(ctx); err != nil {
		return steadyState{}, err
	}
	st.connectedSeen = ds.connected()
	return st, nil
}

func connectScenario(ctx context.Context, s settings, cp *controlPlane, hosts []*host, p *progress, sum *Summary, setup time.Time) error {
	base, err := cp.Metrics(ctx)
	if err != nil {
		return err
	}
	rssBase, err := cp.RSS(ctx)
	if err != nil {
		return err
	}
	wallVerify := verifyReference(time.Second)
	p.say("before the daemons: control plane RSS %.1f MiB, %0.f goroutines; Ed25519 verify %.0f/s on one core by the wall clock (%.1fµs)",
		rssBase/(1<<20), base.get("go_goroutines"), wallVerify, 1e6/wallVerify)
	up, err := connectAll(ctx, s, cp, hosts, p)
	if err != nil {
		return err
	}
	defer up.ds.stop()
	sum.SetupSeconds = time.Since(setup).Seconds()
	p.say("all %d daemons Connected (setup %.1fs); settling %v, then measuring for %v", len(hosts), sum.SetupSeconds, s.settle, s.duration)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(s.settle):
	}
	// The reference is measured in the steady window itself, in CPU time (verifycpu.go).
	sampler := startVerifyCPU()
	st, err := measureSteady(ctx, cp, up.ds, s.duration)
	verifyCPU, nSlices := time.Duration(0), 0
	if sampler != nil {
		verifyCPU, nSlices = sampler.stop()
	}
	if err != nil {
		return err
	}
	n := float64(len(hosts))
	hbRate := st.heartbeats / st.seconds
	cpuPerHB := 0.0
	if st.heartbeats > 0 {
		cpuPerHB = st.cpuSeconds / st.heartbeats * 1e6
	}
	// verifyUs is one verify's cost in µs, the unit of cpu_us_per_heartbeat: its CPU
	// time in the window, or (no thread CPU clock) the wall-clock figure from before.
	verifyUs := 1e6 / wallVerify
	sum.Reference = "Ed25519 verify, wall clock on one core before the daemons started (no thread CPU clock here)"
	if nSlices > 0 && verifyCPU > 0 {
		verifyUs = float64(verifyCPU) / float64(time.Microsecond)
		sum.Reference = fmt.Sprintf("Ed25519 verify, CPU time on one thread during the steady window (median of %d slices of %d verifies every %v)", nSlices, verifySliceBatch, verifySliceEvery)
		sum.VerifyCPUMicros = ptr(verifyUs)
		sum.VerifyCPUSlices = nSlices
	}
	sum.VerifyWallPerSecond = ptr(wallVerify)
	sum.Seconds = st.seconds
	sum.PerSecond = hbRate
	sum.ServerCPUSeconds = st.cpuSeconds
	sum.ReferencePerSecond = 1e6 / verifyUs
	if cpuPerHB > 0 {
		sum.ReferenceRatio = verifyUs / cpuPerHB
	}
	sum.KiBPerDaemon = ptr((st.rss - rssBase) / n / 1024)
	sum.HeapKiBPerDaemon = ptr((st.heap - base.get("go_memstats_heap_inuse_bytes")) / n / 1024)
	sum.StackKiBPerDaemon = ptr((st.stack - base.get("go_memstats_stack_inuse_bytes")) / n / 1024)
	sum.GoroutinesPerDaemon = ptr((st.goroutines - base.get("go_goroutines")) / n)
	sum.HeartbeatsPerSecond = ptr(hbRate)
	sum.CPUMicrosPerHeartbeat = ptr(cpuPerHB)
	sum.VerifiesPerHeartbeat = ptr(cpuPerHB / verifyUs)
	sum.WallVerifiesPerHeartbeat = ptr(cpuPerHB / (1e6 / wallVerify))
	sum.RSSMiB = ptr(st.rss / (1 << 20))
	sum.RSSBaseMiB = ptr(rssBase / (1 << 20))
	p.say("steady: %.0f heartbeats/s validated; server CPU %.1fµs per heartbeat = %.2f Ed25519 verifies of %.1fµs CPU in the window (%.2f of the %.1fµs wall-clock verify before the daemons); RSS %.1f MiB (+%.1f KiB per daemon: heap %.1f KiB, stacks %.1f KiB, %.2f goroutines); %d of %d Connected",
		hbRate, cpuPerHB, *sum.VerifiesPerHeartbeat, verifyUs, *sum.WallVerifiesPerHeartbeat, 1e6/wallVerify, st.rss/(1<<20), *sum.KiBPerDaemon, *sum.HeapKiBPerDaemon, *sum.StackKiBPerDaemon, *sum.GoroutinesPerDaemon, st.connectedSeen, len(hosts))
	if st.connectedSeen != len(hosts) {
		sum.Errors += len(hosts) - st.connectedSeen
	}
	if s.revoke > 0 {
		lat, err := revokeSome(ctx, cp, up.ds, hosts, s.revoke, p)
		if err != nil {
			return err
		}
		slices.Sort(lat)
		sum.RevocationP50Ms, sum.RevocationP99Ms = ptr(pct(lat, 0.5)), ptr(pct(lat, 0.99))
		sum.Revoked = len(lat)
		p.say("revocation: %d hosts revoked while %d heartbeat; stream closed after the RevokeHost call: p50 %.1fms, p99 %.1fms",
			len(lat), len(hosts)-len(lat), *sum.RevocationP50Ms, *sum.RevocationP99Ms)
	}
	return nil
}

// revokeSome revokes k hosts spread over the fleet, one at a time while the rest
// heartbeat, and measures for each how long after the RevokeHost call began its
// daemon saw the stream closed as revoked (the stream is often closed before the
// reply is back, so the call's start is the honest origin). The revoked hosts stay
// revoked.
func revokeSome(ctx context.Context, cp *controlPlane, ds *daemons, hosts []*host, k int, p *progress) ([]time.Duration, error) {
	admin := cp.Admin()
	var out []time.Duration
	step := max(1, len(hosts)/k)
	for i := 0; i < len(hosts) && len(out) < k; i += step {
		h, a := hosts[i], ds.agents[i]
		called := time.Now()
		if _, err := admin.RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: h.NodeID})); err != nil {
			return nil, fmt.Errorf("revoke %s: %w", h.Name, err)
		}
		deadline := called.Add(30 * time.Second)
		for a.Status().Status != agent.StatusRevoked {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s: still %s 30s after it was revoked", h.Name, a.Status().Status)
			}
			time.Sleep(200 * time.Microsecond)
		}
		out = append(out, time.Since(called))
	}
	return out, nil
}

func stormScenario(ctx context.Context, s settings, cp *controlPlane, hosts []*host, p *progress, sum *Summary, setup time.Time) error {
	verify := verifyReference(time.Second)
	up, err := connectAll(ctx, s, cp, hosts, p)
	if err != nil {
		return err
	}
	defer up.ds.stop()
	sum.SetupSeconds = time.Since(setup).Seconds()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(s.settle):
	}
	steadyRSS, err := cp.RSS(ctx)
	if err != nil {
		return err
	}
	n := len(hosts)
	before := up.calls.snapshot()
	streams0 := make([]uint64, n)
	for i, a := range up.ds.agents {
		streams0[i] = a.Status().Streams
	}
	p.say("all %d daemons Connected, control plane RSS %.1f MiB; restarting the control plane", n, steadyRSS/(1<<20))

	t0 := time.Now()
	var tUp time.Time
	if cp.External {
		p.say("restart the control plane at %s now: waiting (up to %v) for the streams to drop", cp.URL, s.stormTimeout)
		if err := waitFor(ctx, s.stormTimeout, func() bool { return up.ds.connected() < n/2+1 }); err != nil {
			return fmt.Errorf("the streams did not drop: %w", err)
		}
		if err := waitFor(ctx, s.stormTimeout, func() bool { return cp.ready(ctx) }); err != nil {
			return fmt.Errorf("the control plane did not come back: %w", err)
		}
		tUp = time.Now()
	} else {
		stopped, started, err := cp.Restart(ctx)
		if err != nil {
			return err
		}
		tUp = time.Now()
		sum.StopSeconds, sum.StartSeconds = ptr(stopped.Seconds()), ptr(started.Seconds())
		p.say("the old control plane exited %.1fs after SIGTERM; the new one was ready %.1fs after it started", stopped.Seconds(), started.Seconds())
	}
	p.say("the control plane is back after %.1fs; waiting for every daemon to reconnect", tUp.Sub(t0).Seconds())
	cpu0, _ := cp.ProcessCPU()
	if cp.External {
		cpu0 = 0 // its CPU counter is the new process's, from zero
	}
	rs := newRSSSampler(ctx, cp, 250*time.Millisecond)
	back := func() int {
		k := 0
		for _, a := range up.ds.agents {
			if st := a.Status(); st.Status == agent.StatusConnected && st.ConnectedSince.After(t0) {
				k++
			}
		}
		return k
	}
	stop := p.every(time.Second, func() string {
		return fmt.Sprintf("reconnected: %d of %d daemons, %.0fs after the control plane was back (RSS %.1f MiB)", back(), n, time.Since(tUp).Seconds(), rs.last()/(1<<20))
	})
	err = waitFor(ctx, s.stormTimeout, func() bool { return back() == n })
	tAll := time.Now()
	stop()
	if err != nil {
		rs.stop()
		return fmt.Errorf("only %d of %d daemons reconnected within %v: %w", back(), n, s.stormTimeout, err)
	}
	// The peak often comes just after the last daemon is back (its session writes).
	select {
	case <-ctx.Done():
	case <-time.After(s.settle):
	}
	peak := rs.stop()
	cpu1, _ := cp.ProcessCPU()
	after := up.calls.snapshot()
	var streams uint64
	for i, a := range up.ds.agents {
		streams += a.Status().Streams - streams0[i]
	}
	reconnect := tAll.Sub(tUp).Seconds()
	sum.Seconds = reconnect
	if reconnect > 0 {
		sum.PerSecond = float64(n) / reconnect
	}
	sum.Reference = "Ed25519 verify on one core"
	sum.ReferencePerSecond = verify
	sum.ReferenceRatio = ratio(sum.PerSecond, verify)
	sum.ServerCPUSeconds = (cpu1 - cpu0).Seconds()
	sum.RestartSeconds = ptr(tUp.Sub(t0).Seconds())
	sum.ReconnectSeconds = ptr(reconnect)
	per := func(proc string) *float64 { return ptr(float64(after[proc]-before[proc]) / float64(n)) }
	sum.AttemptsPerDaemon = per("ConnectEdge")
	sum.UnreachablePerDaemon = per("ConnectEdge unreachable")
	sum.AttestsPerDaemon = per("Attest")
	sum.ChallengesPerDaemon = per("Challenge")
	sum.StreamsPerDaemon = ptr(float64(streams) / float64(n))
	sum.PeakRSSMiB = ptr(peak / (1 << 20))
	sum.PeakRSSRatio = ptr(ratio(peak, steadyRSS))
	sum.RSSMiB = ptr(steadyRSS / (1 << 20))
	p.say("storm: all %d back %.1fs after the control plane was (restart took %.1fs); per daemon %.2f stream attempts (%.2f while nothing listened), %.2f welcomed streams, %.2f attestations, %.2f challenges; peak RSS %.1f MiB = %.2fx the steady %.1f MiB; server CPU %.1fs",
		n, reconnect, *sum.RestartSeconds, *sum.AttemptsPerDaemon, *sum.UnreachablePerDaemon, *sum.StreamsPerDaemon, *sum.AttestsPerDaemon, *sum.ChallengesPerDaemon, peak/(1<<20), *sum.PeakRSSRatio, steadyRSS/(1<<20), sum.ServerCPUSeconds)
	return nil
}

func enrollScenario(sum *Summary, st enrollStats, verify float64, cpuSeconds float64) {
	sum.Seconds = st.EnrollSeconds
	if st.EnrollSeconds > 0 {
		sum.PerSecond = float64(sum.Hosts) / st.EnrollSeconds
	}
	sum.EnrollmentsPerSecond = ptr(sum.PerSecond)
	sum.Reference = "Ed25519 verify on one core"
	sum.ReferencePerSecond = verify
	sum.ReferenceRatio = ratio(sum.PerSecond, verify)
	sum.Throttled = ptr(float64(st.Throttled))
	sum.TokenSeconds = ptr(st.TokenSeconds)
	sum.ServerCPUSeconds = cpuSeconds
}

// ready says whether the control plane answers /readyz with 200.
func (cp *controlPlane) ready(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, cp.URL+"/readyz", nil)
	resp, err := cp.HTTP.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitFor polls cond every 20ms until it holds, ctx ends or d (when positive) passes.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// rssSampler records the control plane's RSS every interval and keeps the peak.
type rssSampler struct {
	mu         sync.Mutex
	peak, cur  float64
	done, quit chan struct{}
}

func newRSSSampler(ctx context.Context, cp *controlPlane, every time.Duration) *rssSampler {
	r := &rssSampler{done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer close(r.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if v, err := cp.RSS(ctx); err == nil {
				r.mu.Lock()
				r.cur, r.peak = v, max(r.peak, v)
				r.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-r.quit:
				return
			case <-t.C:
			}
		}
	}()
	return r
}

func (r *rssSampler) last() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// stop ends the sampling and returns the peak.
func (r *rssSampler) stop() float64 {
	close(r.quit)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peak
}

func ptr(v float64) *float64 { return &v }
