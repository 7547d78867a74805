package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"google.golang.org/protobuf/types/known/durationpb"
)

// behaviour is how a simulated daemon answers fleet commands.
type behaviour int

const (
	obey behaviour = iota
	// ignore receives commands and does nothing (a wedged agent).
	ignore
)

// simDaemon is a daemon simulated with api/seal, as the protocol asks: it keeps a
// live stream (reconnecting when the server goes away), answers RotateKeyCommand by
// calling RotateEdgeKey and then heartbeating under the new key and token on the
// same stream, RefreshTokenCommand by attesting and heartbeating with the new
// token, and InvokeTool with the exit code it was given.
type simDaemon struct {
	t        *testing.T
	srv      *cptest.Server
	name     string
	behave   behaviour
	exitCode int32
	// delay holds each command before it is acted on, so runs take time.
	delay time.Duration

	mu      sync.Mutex
	n       *node
	rotated map[string]bool // fleet run ids already rotated for
	cancel  context.CancelFunc
	done    chan struct{}
}

func enrollNamed(t *testing.T, srv *cptest.Server, name string, tags ...string) *node {
	t.Helper()
	c := srv.ClusterClient()
	pub, priv := newKey(t)
	req := enrollRequest(t, c, srv.EnrollmentToken(t, tags...), pub, priv)
	req.DisplayName = name
	resp, err := c.Enroll(context.Background(), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	return &node{key: priv, pub: pub, id: resp.Msg.GetNodeId(), token: resp.Msg.GetNodeSecurityToken(),
		tenant: resp.Msg.GetTenant(), tags: resp.Msg.GetTags(), client: c}
}

// startDaemon enrolls a host called name with tags and keeps it connected until
// the test ends.
func startDaemon(t *testing.T, srv *cptest.Server, name string, b behaviour, tags ...string) *simDaemon {
	t.Helper()
	d := &simDaemon{t: t, srv: srv, name: name, behave: b, n: enrollNamed(t, srv, name, tags...), rotated: map[string]bool{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go d.loop(ctx)
	t.Cleanup(func() { cancel(); <-d.done })
	waitStatus(t, srv, d.n.id, edgev1.HostStatus_HOST_STATUS_CONNECTED)
	return d
}

func (d *simDaemon) loop(ctx context.Context) {
	defer close(d.done)
	for ctx.Err() == nil {
		d.serve(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serve runs one stream until it ends.
func (d *simDaemon) serve(ctx context.Context) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	n := d.n
	d.mu.Unlock()
	bs := n.client.ConnectEdge(sctx)
	// A blocked Receive ends only when the request side is closed too.
	go func() { <-sctx.Done(); _ = bs.CloseRequest(); _ = bs.CloseResponse() }()
	st := &stream{t: d.t, n: n, bs: bs, id: randomID(d.t), now: time.Now, cancel: cancel}
	send := func(ev *edgev1.EdgeEvent) error {
		d.mu.Lock()
		h := seal.Header{Kind: edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT, Token: d.n.token, NodeID: d.n.id, StreamID: st.id, Time: time.Now()}
		st.seq++
		h.Sequence = st.seq
		env, err := seal.Seal(d.n.key, h, ev)
		d.mu.Unlock()
		if err != nil {
			return err
		}
		return bs.Send(env)
	}
	if send(hello()) != nil {
		return
	}
	for {
		cmd, err := bs.Receive()
		if err != nil {
			return
		}
		if cmd.GetDisconnect() != nil {
			return
		}
		if d.behave == ignore {
			continue
		}
		switch {
		case cmd.GetRotateKey() != nil:
			time.Sleep(d.delay)
			if d.rotate(ctx, cmd.GetRotateKey().GetFleetRunId()) && send(heartbeat()) != nil {
				return
			}
		case cmd.GetRefreshToken() != nil:
			time.Sleep(d.delay)
			tok, err := n.attest(d.t)
			if err != nil {
				d.t.Errorf("%s: attest: %v", d.name, err)
				continue
			}
			d.mu.Lock()
			d.n.token = tok
			d.mu.Unlock()
			if send(heartbeat()) != nil {
				return
			}
		case cmd.GetInvokeTool() != nil:
			time.Sleep(d.delay)
			id := cmd.GetInvokeTool().GetCommandId()
			if send(&edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_CommandResult{CommandResult: &edgev1.CommandResult{
				CommandId: id, ExitCode: d.exitCode, Ok: d.exitCode == 0, Duration: durationpb.New(time.Millisecond),
			}}}) != nil {
				return
			}
		}
	}
}

// rotate performs one rotation for fleet run runID, retrying the same request
// (same rotation_id) while the server is away, as a daemon reconciles a rotation
// it had begun; a run that asks again after the swap is not rotated twice.
func (d *simDaemon) rotate(ctx context.Context, runID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if runID != "" && d.rotated[runID] {
		return true
	}
	r := d.n.newRotation(d.t, time.Now())
	r.payload.FleetRunId = runID // as edged does, from the RotateKeyCommand
	env := d.n.unary(d.t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, d.n.key, d.n.token, r.payload, time.Now())
	for ctx.Err() == nil {
		resp, err := d.n.client.RotateEdgeKey(ctx, connect.NewRequest(env))
		if err == nil {
			d.n.adopt(r, resp.Msg)
			d.rotated[runID] = true
			return true
		}
		if connect.CodeOf(err) != connect.CodeUnavailable && connect.CodeOf(err) != connect.CodeUnknown {
			d.t.Errorf("%s: RotateEdgeKey: %v", d.name, err)
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

func (d *simDaemon) nodeID() string { return d.n.id }

// fleetRun starts a run and returns it.
func startRun(t *testing.T, c edgev1connect.EdgeAdminServiceClient, spec *edgev1.FleetRunSpec) *edgev1.StartFleetRunResponse {
	t.Helper()
	resp, err := c.StartFleetRun(context.Background(), connect.NewRequest(&edgev1.StartFleetRunRequest{Spec: spec}))
	if err != nil {
		t.Fatalf("StartFleetRun: %v", err)
	}
	return resp.Msg
}

// watch collects a run's events after after, until run_finished.
func watch(t *testing.T, c edgev1connect.EdgeAdminServiceClient, runID string, after uint64) []*edgev1.FleetEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := c.WatchFleetRun(ctx, connect.NewRequest(&edgev1.WatchFleetRunRequest{RunId: runID, AfterSequence: after}))
	if err != nil {
		t.Fatalf("WatchFleetRun: %v", err)
	}
	defer s.Close()
	var out []*edgev1.FleetEvent
	for s.Receive() {
		out = append(out, s.Msg().GetEvent())
	}
	if err := s.Err(); err != nil {
		t.Fatalf("WatchFleetRun: %v", err)
	}
	if len(out) == 0 || out[len(out)-1].GetRunFinished() == nil {
		t.Fatalf("watch ended without run_finished: %v", out)
	}
	return out
}

// results maps node id to its host_result.
func results(events []*edgev1.FleetEvent) map[string]*edgev1.FleetHostResult {
	out := map[string]*edgev1.FleetHostResult{}
	for _, e := range events {
		if r := e.GetHostResult(); r != nil {
			out[r.GetNodeId()] = r
		}
	}
	return out
}

func rotationRows(t *testing.T, srv *cptest.Server, nodeID string) int {
	t.Helper()
	rs, err := srv.Store.ListNodeRotations(context.Background(), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	return len(rs)
}

func rotateSpec(target string) *edgev1.FleetRunSpec {
	return &edgev1.FleetRunSpec{Action: edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE, Target: target}
}

func expectHost(t *testing.T, got map[string]*edgev1.FleetHostResult, nodeID string, state edgev1.FleetHostState, reason string) *edgev1.FleetHostResult {
	t.Helper()
	r := got[nodeID]
	if r == nil {
		t.Fatalf("no host_result for %s", nodeID)
	}
	if r.GetState() != state || r.GetReason() != reason {
		t.Fatalf("%s (%s): %s reason %q (%s), want %s reason %q", nodeID, r.GetName(), r.GetState(), r.GetReason(), r.GetMessage(), state, reason)
	}
	if strings.Contains(r.GetMessage(), "manual intervention") {
		t.Fatalf("%s: message %q says manual intervention for a state that heals", nodeID, r.GetMessage())
	}
	return r
}

func TestFleetPlanAndBadSpecsStoreNothing(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		for i := range 7 {
			enrollNamed(t, srv, fmt.Sprintf("web-%d", i), "web")
		}
		enrollNamed(t, srv, "db-0", "db")
		c := srv.AdminClient()
		spec := rotateSpec("tags = AnyOf(web)")
		spec.Batch = 3
		resp, err := c.PlanFleetRun(ctx, connect.NewRequest(&edgev1.PlanFleetRunRequest{Spec: spec}))
		if err != nil {
			t.Fatal(err)
		}
		p := resp.Msg.GetPlan()
		if p.GetTarget() != "tags=AnyOf(web)" || p.GetTotalHosts() != 7 || len(p.GetWaves()) != 3 || p.GetMaxConcurrency() != 3 {
			t.Fatalf("plan = %v", p)
		}
		if w := p.GetWaves()[2]; w.GetNumber() != 3 || len(w.GetHosts()) != 1 || w.GetHosts()[0].GetName() != "web-6" {
			t.Fatalf("third wave = %v, want web-6 alone (hosts ordered by name)", w)
		}
		// Parallel: one wave, bounded by the server's cap.
		spec = rotateSpec("all")
		spec.Mode = edgev1.FleetMode_FLEET_MODE_PARALLEL
		resp, err = c.PlanFleetRun(ctx, connect.NewRequest(&edgev1.PlanFleetRunRequest{Spec: spec}))
		if err != nil {
			t.Fatal(err)
		}
		if p := resp.Msg.GetPlan(); len(p.GetWaves()) != 1 || p.GetMaxConcurrency() != 8 {
			t.Fatalf("parallel plan = %v", p)
		}

		for name, spec := range map[string]*edgev1.FleetRunSpec{
			"malformed selector": rotateSpec("tags=AnyOf(web"),
			"no hosts":           rotateSpec("tags=AnyOf(nothing)"),
			"no action":          {Target: "all"},
			"stop-after 0":       {Action: edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE, Target: "all", OnError: edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER},
			"cmd.run no command": {Action: edgev1.FleetAction_FLEET_ACTION_CMD_RUN, Target: "all"},
		} {
			_, err := c.StartFleetRun(ctx, connect.NewRequest(&edgev1.StartFleetRunRequest{Spec: spec}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("%s: %v, want InvalidArgument", name, err)
			}
			if name == "malformed selector" && !strings.Contains(err.Error(), "column") {
				t.Errorf("malformed selector error %q does not say where", err)
			}
			if name == "no hosts" && !strings.Contains(err.Error(), "target selects no hosts") {
				t.Errorf("no hosts error = %q", err)
			}
		}
		runs, err := srv.Store.ListFleetRuns(ctx, store.FleetRunFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(runs) != 0 {
			t.Fatalf("plan and refused starts stored %d runs", len(runs))
		}
		if n := rotationRows(t, srv, "n-any"); n != 0 {
			t.Fatal("rotations happened")
		}
	})
}

func TestFleetRollingRotation(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		var daemons []*simDaemon
		for i := range 12 {
			daemons = append(daemons, startDaemon(t, srv, fmt.Sprintf("web-%02d", i), obey, "web"))
		}
		offline := enrollNamed(t, srv, "web-98", "web")
		revoked := enrollNamed(t, srv, "web-99", "web")
		if _, err := srv.AdminClient().RevokeHost(context.Background(), connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: revoked.id})); err != nil {
			t.Fatal(err)
		}
		enrollNamed(t, srv, "db-0", "db") // not selected

		c := srv.AdminClient()
		started := startRun(t, c, rotateSpec("tags=AnyOf(web)"))
		events := watch(t, c, started.GetRun().GetId(), 0)

		if events[0].GetRunStarted() == nil || events[0].GetSequence() != 1 {
			t.Fatalf("first event = %v, want run_started #1", events[0])
		}
		var waves []string
		for i, e := range events {
			if e.GetSequence() != uint64(i+1) {
				t.Fatalf("event %d has sequence %d", i, e.GetSequence())
			}
			if w := e.GetWaveStarted(); w != nil {
				waves = append(waves, fmt.Sprintf("%d:%d/%d", w.GetWave(), w.GetHosts(), w.GetTotalHosts()))
			}
		}
		if got := strings.Join(waves, " "); got != "1:5/14 2:5/14 3:4/14" {
			t.Fatalf("waves = %s, want 1:5/14 2:5/14 3:4/14", got)
		}
		got := results(events)
		for _, d := range daemons {
			r := expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "")
			if r.GetMessage() != "rotated (old key archived; new token bound)" {
				t.Fatalf("message = %q", r.GetMessage())
			}
			if n := rotationRows(t, srv, d.nodeID()); n != 1 {
				t.Fatalf("%s has %d rotations, want 1", d.name, n)
			}
		}
		// The audit trail ties every rotation to the run that asked for it.
		audited := map[string]bool{}
		entries, err := srv.Store.ListAudit(context.Background(), "", 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Action == "rotate" && e.Details["fleet_run_id"] == started.GetRun().GetId() {
				audited[e.NodeID] = true
			}
		}
		for _, d := range daemons {
			if !audited[d.nodeID()] {
				t.Errorf("%s: no rotate audit entry names fleet run %s", d.name, started.GetRun().GetId())
			}
		}
		expectHost(t, got, offline.id, edgev1.FleetHostState_FLEET_HOST_STATE_SKIPPED, "disconnected")
		expectHost(t, got, revoked.id, edgev1.FleetHostState_FLEET_HOST_STATE_SKIPPED, "revoked")
		fin := events[len(events)-1].GetRunFinished().GetRun()
		if fin.GetState() != edgev1.FleetRunState_FLEET_RUN_STATE_SUCCEEDED || fin.GetCounts().GetSucceeded() != 12 || fin.GetCounts().GetSkipped() != 2 || fin.GetCounts().GetTotal() != 14 {
			t.Fatalf("finished run = %v", fin)
		}

		// Watch again: a finished run replays whole, or after a sequence.
		again := watch(t, c, started.GetRun().GetId(), 0)
		if len(again) != len(events) {
			t.Fatalf("replay has %d events, want %d", len(again), len(events))
		}
		tail := watch(t, c, started.GetRun().GetId(), 10)
		if len(tail) != len(events)-10 || tail[0].GetSequence() != 11 {
			t.Fatalf("replay after 10 starts at %d with %d events", tail[0].GetSequence(), len(tail))
		}
		get, err := c.GetFleetRun(context.Background(), connect.NewRequest(&edgev1.GetFleetRunRequest{RunId: started.GetRun().GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		if len(get.Msg.GetHosts()) != 14 || get.Msg.GetRun().GetState() != edgev1.FleetRunState_FLEET_RUN_STATE_SUCCEEDED || len(get.Msg.GetPlan().GetWaves()) != 3 {
			t.Fatalf("GetFleetRun = %v", get.Msg)
		}

		body := scrape(t, srv)
		for _, want := range []string{
			`aegis_edge_fleet_run_hosts_total{action="keys.rotate",result="succeeded"} 12`,
			`aegis_edge_fleet_run_hosts_total{action="keys.rotate",result="skipped"} 2`,
			`aegis_edge_fleet_runs_active 0`,
			`aegis_edge_throttled_requests_total 0`,
		} {
			if !strings.Contains(body, want+"\n") {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

func stateOf(events []*edgev1.FleetEvent) *edgev1.FleetRun {
	return events[len(events)-1].GetRunFinished().GetRun()
}

// stop-after=2 counts failures across the run: one ignoring host in wave 1 and one
// in wave 2 halt it after wave 2; wave 3 is not started. Fail-fast halts at the
// first failure.
func TestFleetStopAfterDeadlineAndFailFast(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		c := srv.AdminClient()
		var ds []*simDaemon
		for i := range 6 {
			b := obey
			if i == 1 || i == 3 {
				b = ignore
			}
			ds = append(ds, startDaemon(t, srv, fmt.Sprintf("app-%d", i), b, "app"))
		}
		spec := rotateSpec("tags=AnyOf(app)")
		spec.Batch = 2
		spec.OnError = edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER
		spec.StopAfter = 2
		spec.Deadline = durationpb.New(time.Second)
		events := watch(t, c, startRun(t, c, spec).GetRun().GetId(), 0)
		got := results(events)
		for i, want := range []edgev1.FleetHostState{
			edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, edgev1.FleetHostState_FLEET_HOST_STATE_FAILED,
			edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, edgev1.FleetHostState_FLEET_HOST_STATE_FAILED,
			edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED, edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED,
		} {
			reason := map[edgev1.FleetHostState]string{edgev1.FleetHostState_FLEET_HOST_STATE_FAILED: "deadline", edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED: "halted"}[want]
			r := expectHost(t, got, ds[i].nodeID(), want, reason)
			if reason == "deadline" && !strings.Contains(r.GetMessage(), "aegis edge keys rotate") {
				t.Errorf("deadline message %q does not say what to do", r.GetMessage())
			}
		}
		run := stateOf(events)
		if run.GetState() != edgev1.FleetRunState_FLEET_RUN_STATE_FAILED || run.GetHaltedReason() != "stop-after=2 reached" || run.GetCounts().GetNotStarted() != 2 {
			t.Fatalf("run = %v", run)
		}
		for _, e := range events {
			if w := e.GetWaveStarted(); w != nil && w.GetWave() == 3 {
				t.Fatal("wave 3 started after the run halted")
			}
		}

		// Fail-fast, sequential: the first failure stops everything after it.
		spec = rotateSpec("tags=AnyOf(app)")
		spec.Mode = edgev1.FleetMode_FLEET_MODE_SEQUENTIAL
		spec.OnError = edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_FAIL_FAST
		spec.Deadline = durationpb.New(time.Second)
		events = watch(t, c, startRun(t, c, spec).GetRun().GetId(), 0)
		got = results(events)
		expectHost(t, got, ds[0].nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "")
		expectHost(t, got, ds[1].nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_FAILED, "deadline")
		for _, d := range ds[2:] {
			expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED, "halted")
		}
		if run := stateOf(events); run.GetHaltedReason() != "fail-fast: a host failed" {
			t.Fatalf("run = %v", run)
		}
	})
}

func TestFleetCancel(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		c := srv.AdminClient()
		var ds []*simDaemon
		for i := range 4 {
			ds = append(ds, startDaemon(t, srv, fmt.Sprintf("c-%d", i), ignore, "c"))
		}
		spec := rotateSpec("tags=AnyOf(c)")
		spec.Mode = edgev1.FleetMode_FLEET_MODE_SEQUENTIAL
		spec.Deadline = durationpb.New(time.Second)
		id := startRun(t, c, spec).GetRun().GetId()
		// Cancel once the first host is in flight.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			get, err := c.GetFleetRun(context.Background(), connect.NewRequest(&edgev1.GetFleetRunRequest{RunId: id}))
			if err != nil {
				t.Fatal(err)
			}
			if get.Msg.GetHosts()[0].GetState() == edgev1.FleetHostState_FLEET_HOST_STATE_RUNNING {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("first host never started")
			}
		}
		if _, err := c.CancelFleetRun(context.Background(), connect.NewRequest(&edgev1.CancelFleetRunRequest{RunId: id})); err != nil {
			t.Fatal(err)
		}
		events := watch(t, c, id, 0)
		got := results(events)
		// The host in flight finishes; the rest never start.
		expectHost(t, got, ds[0].nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_FAILED, "deadline")
		for _, d := range ds[1:] {
			expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED, "cancelled")
		}
		if run := stateOf(events); run.GetState() != edgev1.FleetRunState_FLEET_RUN_STATE_CANCELLED {
			t.Fatalf("run = %v", run)
		}
		entries, err := srv.Store.ListAudit(context.Background(), "", 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		var cancelled bool
		for _, e := range entries {
			cancelled = cancelled || e.Action == "fleet_run_cancel" && e.Details["fleet_run_id"] == id && strings.HasPrefix(e.Actor, "op:")
		}
		if !cancelled {
			t.Error("no fleet_run_cancel audit entry names the run and the operator")
		}
	})
}

// A control-plane restart in the middle of a run: the run resumes and finishes,
// no host is rotated twice, and a watcher re-attaches after the last sequence it saw.
func TestFleetResumesAfterRestart(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		opts.FleetResumeGrace = 10 * time.Second
		srv := cptest.Start(t, opts)
		c := srv.AdminClient()
		var ds []*simDaemon
		for i := range 8 {
			d := startDaemon(t, srv, fmt.Sprintf("r-%d", i), obey, "r")
			d.delay = 150 * time.Millisecond
			ds = append(ds, d)
		}
		spec := rotateSpec("tags=AnyOf(r)")
		spec.Batch = 2
		spec.Deadline = durationpb.New(20 * time.Second)
		id := startRun(t, c, spec).GetRun().GetId()

		// Let the first wave or two happen, then restart.
		var seen uint64
		deadline := time.Now().Add(20 * time.Second)
		for {
			es, err := srv.Store.ListFleetRunEvents(context.Background(), id, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(es) >= 4 || time.Now().After(deadline) {
				seen = es[len(es)-1].Sequence
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		srv.Restart(t)
		c = srv.AdminClient()
		rest := watch(t, c, id, seen)
		if rest[0].GetSequence() != seen+1 {
			t.Fatalf("re-attached watch starts at %d, want %d", rest[0].GetSequence(), seen+1)
		}
		all := watch(t, c, id, 0)
		run := stateOf(all)
		if run.GetState() != edgev1.FleetRunState_FLEET_RUN_STATE_SUCCEEDED || run.GetCounts().GetSucceeded() != 8 {
			t.Fatalf("run after restart = %v; hosts %v", run, results(all))
		}
		count := map[string]int{}
		for _, e := range all {
			if r := e.GetHostResult(); r != nil {
				count[r.GetNodeId()]++
			}
		}
		for _, d := range ds {
			if count[d.nodeID()] != 1 {
				t.Errorf("%s has %d host results, want 1", d.name, count[d.nodeID()])
			}
			if n := rotationRows(t, srv, d.nodeID()); n != 1 {
				t.Errorf("%s has %d Rotation rows, want 1", d.name, n)
			}
		}
	})
}

func TestFleetTokenRefreshAndCmdRun(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		c := srv.AdminClient()
		var ds []*simDaemon
		for i := range 3 {
			ds = append(ds, startDaemon(t, srv, fmt.Sprintf("t-%d", i), obey, "t"))
		}
		events := watch(t, c, startRun(t, c, &edgev1.FleetRunSpec{Action: edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH, Target: "tags=AnyOf(t)"}).GetRun().GetId(), 0)
		got := results(events)
		for _, d := range ds {
			if r := expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, ""); r.GetMessage() != "token refreshed" {
				t.Fatalf("message = %q", r.GetMessage())
			}
			if n := rotationRows(t, srv, d.nodeID()); n != 0 {
				t.Fatalf("a token refresh rotated %s", d.name)
			}
		}

		ds[2].exitCode = 3
		events = watch(t, c, startRun(t, c, &edgev1.FleetRunSpec{Action: edgev1.FleetAction_FLEET_ACTION_CMD_RUN, Target: "tags=AnyOf(t)",
			CmdRun: &edgev1.CmdRunArgs{Command: "/bin/true"}}).GetRun().GetId(), 0)
		got = results(events)
		for _, d := range ds[:2] {
			if r := expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, ""); r.GetMessage() != "succeeded (exit 0)" {
				t.Fatalf("message = %q", r.GetMessage())
			}
		}
		if r := expectHost(t, got, ds[2].nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_FAILED, "exit_code"); r.GetExitCode() != 3 || r.GetMessage() != "failed (exit 3)" {
			t.Fatalf("result = %v", r)
		}
		if run := stateOf(events); run.GetState() != edgev1.FleetRunState_FLEET_RUN_STATE_FAILED {
			t.Fatalf("run = %v", run)
		}
	})
}

func TestUpdateHostTags(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		n := enrollNamed(t, srv, "tagme", "a", "b")
		c := srv.AdminClient()
		resp, err := c.UpdateHostTags(ctx, connect.NewRequest(&edgev1.UpdateHostTagsRequest{NodeId: n.id, Add: []string{"c", "zone:eu/1"}, Remove: []string{"a"}}))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(resp.Msg.GetHost().GetTags(), ","); got != "b,c,zone:eu/1" {
			t.Fatalf("tags = %s", got)
		}
		for _, bad := range [][]string{{"-x"}, {"has space"}, {strings.Repeat("x", 64)}} {
			_, err := c.UpdateHostTags(ctx, connect.NewRequest(&edgev1.UpdateHostTagsRequest{NodeId: n.id, Add: bad}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("tag %q: %v, want InvalidArgument", bad, err)
			}
		}
		var many []string
		for i := range 65 {
			many = append(many, fmt.Sprintf("t%d", i))
		}
		if _, err := c.UpdateHostTags(ctx, connect.NewRequest(&edgev1.UpdateHostTagsRequest{NodeId: n.id, Add: many})); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("65 tags: %v, want InvalidArgument", err)
		}
		if got := strings.Join(getDaemon(t, srv, n.id).Tags, ","); got != "b,c,zone:eu/1" {
			t.Fatalf("refused updates changed the tags to %s", got)
		}
		// Selectors see the new tags at once.
		plan, err := c.PlanFleetRun(ctx, connect.NewRequest(&edgev1.PlanFleetRunRequest{Spec: rotateSpec("tags=AllOf(c,zone:eu/1)")}))
		if err != nil || plan.Msg.GetPlan().GetTotalHosts() != 1 {
			t.Fatalf("plan on new tags: %v %v", plan, err)
		}
	})
}
