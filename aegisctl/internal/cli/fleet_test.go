package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestParseFleetMode(t *testing.T) {
	good := []struct {
		in    string
		mode  edgev1.FleetMode
		batch int32
		out   string
	}{
		{"sequential", edgev1.FleetMode_FLEET_MODE_SEQUENTIAL, 1, "sequential"},
		{"rolling=5", edgev1.FleetMode_FLEET_MODE_ROLLING, 5, "rolling=5"},
		{"rolling=1", edgev1.FleetMode_FLEET_MODE_ROLLING, 1, "rolling=1"},
		{"Rolling=10", edgev1.FleetMode_FLEET_MODE_ROLLING, 10, "rolling=10"},
		{"parallel", edgev1.FleetMode_FLEET_MODE_PARALLEL, 0, "parallel"},
		{"Parallel", edgev1.FleetMode_FLEET_MODE_PARALLEL, 0, "parallel"},
		{"Sequential", edgev1.FleetMode_FLEET_MODE_SEQUENTIAL, 1, "sequential"},
		{" parallel ", edgev1.FleetMode_FLEET_MODE_PARALLEL, 0, "parallel"},
	}
	for _, g := range good {
		mode, batch, err := parseFleetMode(g.in)
		if err != nil || mode != g.mode || batch != g.batch {
			t.Errorf("parseFleetMode(%q) = %v, %d, %v; want %v, %d", g.in, mode, batch, err, g.mode, g.batch)
			continue
		}
		if got := formatFleetMode(&edgev1.FleetRunSpec{Mode: mode, Batch: batch}); got != g.out {
			t.Errorf("formatFleetMode(parse(%q)) = %q, want %q", g.in, got, g.out)
		}
	}
	bad := map[string]string{
		"":              `--mode "": expected sequential, rolling=N or parallel`,
		"fast":          `--mode "fast": expected sequential, rolling=N or parallel`,
		"rolling":       "--mode rolling needs a batch size: rolling=N, e.g. rolling=5",
		"rolling=":      "--mode rolling=: N must be a whole number of hosts from 1 to 10000, e.g. rolling=5",
		"rolling=0":     "--mode rolling=0: N must be a whole number of hosts from 1 to 10000, e.g. rolling=5",
		"rolling=-3":    "--mode rolling=-3: N must be",
		"rolling=x":     "--mode rolling=x: N must be",
		"rolling=2.5":   "--mode rolling=2.5: N must be",
		"rolling=10001": "--mode rolling=10001: N must be",
		"parallel=3":    "--mode parallel takes no =N (only rolling=N does)",
		"sequential=1":  "--mode sequential takes no =N",
		"rolling 5":     `--mode "rolling 5": expected sequential, rolling=N or parallel`,
	}
	for in, want := range bad {
		_, _, err := parseFleetMode(in)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("parseFleetMode(%q) = %v, want an error starting %q", in, err, want)
		}
	}
}

func TestParseFleetOnError(t *testing.T) {
	good := []struct {
		in     string
		policy edgev1.FleetFailurePolicy
		n      int32
		out    string
	}{
		{"continue", edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE, 0, "continue"},
		{"stop-after=1", edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER, 1, "stop-after=1"},
		{"stop-after=3", edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER, 3, "stop-after=3"},
		{"fail-fast", edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_FAIL_FAST, 1, "fail-fast"},
		// The guide's names, as written in its "Recommended failure policy" table.
		{"ContinueOnError", edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE, 0, "continue"},
		{"StopAfter(3)", edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER, 3, "stop-after=3"},
		{"FailFast", edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_FAIL_FAST, 1, "fail-fast"},
	}
	for _, g := range good {
		policy, n, err := parseFleetOnError(g.in)
		if err != nil || policy != g.policy || n != g.n {
			t.Errorf("parseFleetOnError(%q) = %v, %d, %v; want %v, %d", g.in, policy, n, err, g.policy, g.n)
			continue
		}
		if got := formatFleetOnError(&edgev1.FleetRunSpec{OnError: policy, StopAfter: n}); got != g.out {
			t.Errorf("formatFleetOnError(parse(%q)) = %q, want %q", g.in, got, g.out)
		}
	}
	bad := map[string]string{
		"":             `--on-error "": expected continue, stop-after=N or fail-fast`,
		"halt":         `--on-error "halt": expected continue, stop-after=N or fail-fast`,
		"stop-after":   "--on-error stop-after needs a count: stop-after=N, e.g. stop-after=3",
		"stop-after=x": "--on-error stop-after=x: N must be a whole number of failed hosts from 1 to 10000, e.g. stop-after=3",
		"stop-after=0": "--on-error stop-after=0: N must be",
		"stop-after=":  "--on-error stop-after=: N must be",
		"continue=2":   "--on-error continue takes no =N (only stop-after=N does)",
		"fail-fast=1":  "--on-error fail-fast takes no =N",
		"stopafter=2":  `--on-error "stopafter=2": expected`,
		"StopAfter(0)": "--on-error stop-after=0: N must be",
		"StopAfter()":  "--on-error stop-after=: N must be",
		"StopAfter":    `--on-error "StopAfter": expected`,
	}
	for in, want := range bad {
		_, _, err := parseFleetOnError(in)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("parseFleetOnError(%q) = %v, want an error starting %q", in, err, want)
		}
	}
}

func TestDurationsAsPrinted(t *testing.T) {
	for d, want := range map[time.Duration]string{
		60 * time.Second: "1m", 90 * time.Second: "1m30s", 1500 * time.Millisecond: "1.5s", 2 * time.Hour: "2h", 24 * time.Hour: "24h",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
	for d, want := range map[time.Duration]string{
		12412 * time.Millisecond: "12.4s", 0: "0.0s", 59940 * time.Millisecond: "59.9s", 192420 * time.Millisecond: "3m12.4s",
	} {
		if got := elapsedText(d); got != want {
			t.Errorf("elapsedText(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestFleetHostLines(t *testing.T) {
	host := func(state edgev1.FleetHostState, reason, msg string, code int32) *edgev1.FleetHostResult {
		return &edgev1.FleetHostResult{NodeId: "n-7a3b2f0c91d4", Name: "web-east-1", State: state, Reason: reason, Message: msg, ExitCode: code}
	}
	const (
		ok      = edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED
		failed  = edgev1.FleetHostState_FLEET_HOST_STATE_FAILED
		skipped = edgev1.FleetHostState_FLEET_HOST_STATE_SKIPPED
		notRun  = edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED
	)
	cases := []struct {
		act  fleetAction
		r    *edgev1.FleetHostResult
		want string
	}{
		{fleetKeysRotate, host(ok, "", "rotated (old key archived; new token bound)", 0), "[n-7a3b2f0c91d4 web-east-1] ✔ rotated (old key archived; new token bound)"},
		{fleetTokenRefresh, host(ok, "", "token refreshed", 0), "[n-7a3b2f0c91d4 web-east-1] ✔ refreshed (new token bound)"},
		{fleetCmdRun, host(ok, "", "exit 0", 0), "[n-7a3b2f0c91d4 web-east-1] ✔ succeeded (exit 0)"},
		{fleetCmdRun, host(failed, "exit_code", "exited 3", 3), "[n-7a3b2f0c91d4 web-east-1] ✖ failed (exit 3)"},
		{fleetCmdRun, host(failed, "denied", "the local policy does not allow it", 0), "[n-7a3b2f0c91d4 web-east-1] ✖ failed (denied: the local policy does not allow it)"},
		{fleetKeysRotate, host(failed, "deadline", "no envelope under a new key within 1m", 0), "[n-7a3b2f0c91d4 web-east-1] ✖ failed (deadline: no envelope under a new key within 1m)"},
		{fleetKeysRotate, host(failed, "deadline", "deadline: already prefixed", 0), "[n-7a3b2f0c91d4 web-east-1] ✖ failed (deadline: already prefixed)"},
		{fleetKeysRotate, host(failed, "deadline", "", 0), "[n-7a3b2f0c91d4 web-east-1] ✖ failed (deadline)"},
		{fleetKeysRotate, host(skipped, "disconnected", "the host had no live stream", 0), "[n-7a3b2f0c91d4 web-east-1] - skipped (disconnected)"},
		{fleetKeysRotate, host(skipped, "revoked", "", 0), "[n-7a3b2f0c91d4 web-east-1] - skipped (revoked)"},
		{fleetKeysRotate, host(notRun, "halted", "stop-after=2 reached", 0), "[n-7a3b2f0c91d4 web-east-1] - not started (halted)"},
		{fleetKeysRotate, host(notRun, "cancelled", "", 0), "[n-7a3b2f0c91d4 web-east-1] - not started (cancelled)"},
		{fleetKeysRotate, host(edgev1.FleetHostState_FLEET_HOST_STATE_RUNNING, "", "", 0), ""},
		{fleetKeysRotate, &edgev1.FleetHostResult{NodeId: "n-3b1d9f00c2e1", State: skipped, Reason: "disconnected"}, "[n-3b1d9f00c2e1] - skipped (disconnected)"},
	}
	for _, c := range cases {
		if got := c.act.hostLine(c.r); got != c.want {
			t.Errorf("%s %v:\n got %q\nwant %q", c.act.name, c.r, got, c.want)
		}
	}
}

// Five hosts, rolling=2: one rotated twice over a broken stream, one failed, one skipped.
func rotateRunEvents() []*edgev1.FleetEvent {
	at := timestamppb.New(time.Date(2026, 4, 28, 14, 32, 11, 0, time.UTC))
	spec := &edgev1.FleetRunSpec{
		Action: edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE, Target: "tags=AnyOf(prod)", Mode: edgev1.FleetMode_FLEET_MODE_ROLLING, Batch: 2,
		OnError: edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE, Deadline: durationpb.New(time.Minute),
	}
	ref := func(i int) *edgev1.FleetHostRef {
		return &edgev1.FleetHostRef{NodeId: "n-00000000000" + string(rune('0'+i)), Name: "web-" + string(rune('0'+i))}
	}
	result := func(i, wave int, state edgev1.FleetHostState, reason, msg string) *edgev1.FleetEvent {
		return &edgev1.FleetEvent{Event: &edgev1.FleetEvent_HostResult{HostResult: &edgev1.FleetHostResult{
			NodeId: ref(i).NodeId, Name: ref(i).Name, Wave: int32(wave), State: state, Reason: reason, Message: msg,
		}}}
	}
	wave := func(n, hosts int32) *edgev1.FleetEvent {
		return &edgev1.FleetEvent{Event: &edgev1.FleetEvent_WaveStarted{WaveStarted: &edgev1.FleetWaveStarted{Wave: n, Hosts: hosts, TotalHosts: 5}}}
	}
	run := &edgev1.FleetRun{Id: "fr-1", Spec: spec, State: edgev1.FleetRunState_FLEET_RUN_STATE_RUNNING, Counts: &edgev1.FleetRunCounts{Total: 5}}
	plan := &edgev1.FleetPlan{Target: "tags=AnyOf(prod)", TotalHosts: 5, MaxConcurrency: 2, Waves: []*edgev1.FleetWave{
		{Number: 1, Hosts: []*edgev1.FleetHostRef{ref(1), ref(2)}},
		{Number: 2, Hosts: []*edgev1.FleetHostRef{ref(3), ref(4)}},
		{Number: 3, Hosts: []*edgev1.FleetHostRef{ref(5)}},
	}}
	finished := &edgev1.FleetRun{Id: "fr-1", Spec: spec, State: edgev1.FleetRunState_FLEET_RUN_STATE_FAILED,
		Counts: &edgev1.FleetRunCounts{Total: 5, Succeeded: 3, Failed: 1, Skipped: 1}}
	evs := []*edgev1.FleetEvent{
		{Event: &edgev1.FleetEvent_RunStarted{RunStarted: &edgev1.FleetRunStarted{Run: run, Plan: plan}}},
		wave(1, 2),
		result(1, 1, edgev1.FleetHostState_FLEET_HOST_STATE_RUNNING, "", ""),
		result(1, 1, edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "", "rotated (old key archived; new token bound)"),
		result(2, 1, edgev1.FleetHostState_FLEET_HOST_STATE_FAILED, "deadline", "no envelope under a new key within 1m; the host keeps its old key"),
		wave(2, 2),
		result(3, 2, edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "", "rotated (old key archived; new token bound)"),
		result(4, 2, edgev1.FleetHostState_FLEET_HOST_STATE_SKIPPED, "disconnected", "no live stream"),
		wave(3, 1),
		result(5, 3, edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "", "rotated (old key archived; new token bound)"),
		{Event: &edgev1.FleetEvent_RunFinished{RunFinished: &edgev1.FleetRunFinished{Run: finished, Elapsed: durationpb.New(12412 * time.Millisecond)}}},
	}
	for i, ev := range evs {
		ev.RunId, ev.Sequence, ev.At = "fr-1", uint64(i+1), at
	}
	return evs
}

// fakeFleet serves the fleet RPCs from a canned history.
type fakeFleet struct {
	fakeAdmin
	mu     sync.Mutex
	events []*edgev1.FleetEvent
	// breakAfter ends the first watch with Unavailable after that many events, as a
	// control-plane restart would; hang makes every watch wait for its caller instead
	// of finishing the run.
	breakAfter int
	hang       bool
	watches    []uint64
	starts     []*edgev1.FleetRunSpec
	plans      int
}

func (f *fakeFleet) PlanFleetRun(_ context.Context, req *connect.Request[edgev1.PlanFleetRunRequest]) (*connect.Response[edgev1.PlanFleetRunResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.plans++
	f.mu.Unlock()
	return connect.NewResponse(&edgev1.PlanFleetRunResponse{Plan: f.events[0].GetRunStarted().GetPlan()}), nil
}

func (f *fakeFleet) StartFleetRun(_ context.Context, req *connect.Request[edgev1.StartFleetRunRequest]) (*connect.Response[edgev1.StartFleetRunResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	spec := req.Msg.GetSpec()
	if strings.Contains(spec.GetTarget(), "Any(") {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New(`invalid request: target at column 6: expected AnyOf, AllOf or NoneOf after tags=, got "Any"`))
	}
	f.mu.Lock()
	f.starts = append(f.starts, spec)
	f.mu.Unlock()
	st := f.events[0].GetRunStarted()
	return connect.NewResponse(&edgev1.StartFleetRunResponse{Run: st.GetRun(), Plan: st.GetPlan()}), nil
}

func (f *fakeFleet) WatchFleetRun(ctx context.Context, req *connect.Request[edgev1.WatchFleetRunRequest], stream *connect.ServerStream[edgev1.WatchFleetRunResponse]) error {
	if err := f.auth(req.Header()); err != nil {
		return err
	}
	if req.Msg.GetRunId() != "fr-1" {
		return connect.NewError(connect.CodeNotFound, errors.New("no such run"))
	}
	f.mu.Lock()
	f.watches = append(f.watches, req.Msg.GetAfterSequence())
	first := len(f.watches) == 1
	f.mu.Unlock()
	sent := 0
	for _, ev := range f.events {
		if ev.GetSequence() <= req.Msg.GetAfterSequence() {
			continue
		}
		if first && f.breakAfter > 0 && sent == f.breakAfter {
			return connect.NewError(connect.CodeUnavailable, errors.New("the control plane is shutting down"))
		}
		if f.hang && ev.GetRunFinished() != nil {
			<-ctx.Done()
			return ctx.Err()
		}
		if err := stream.Send(&edgev1.WatchFleetRunResponse{Event: ev}); err != nil {
			return err
		}
		sent++
	}
	return nil
}

func (f *fakeFleet) ListFleetRuns(_ context.Context, req *connect.Request[edgev1.ListFleetRunsRequest]) (*connect.Response[edgev1.ListFleetRunsResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	fin := f.events[len(f.events)-1].GetRunFinished().GetRun()
	fin.CreatedAt = timestamppb.New(time.Date(2026, 4, 28, 14, 32, 11, 0, time.UTC))
	return connect.NewResponse(&edgev1.ListFleetRunsResponse{Runs: []*edgev1.FleetRun{fin}}), nil
}

func TestFleetRotateFollowsAndReattaches(t *testing.T) {
	ff := &fakeFleet{events: rotateRunEvents(), breakAfter: 4}
	f := loggedIn(t, ff)
	out, errOut, code := f.run(t, "", nil, "edge", "fleet", "keys", "rotate", "--target", "tags=AnyOf(prod)", "--mode", "rolling=2", "--deadline", "60s")
	want := "fleet run fr-1: keys.rotate on 5 hosts selected by tags=AnyOf(prod) (mode rolling=2, on-error continue, deadline 1m)\n" +
		"[wave 1] starting 2 of 5 nodes\n" +
		"[n-000000000001 web-1] ✔ rotated (old key archived; new token bound)\n" +
		"[n-000000000002 web-2] ✖ failed (deadline: no envelope under a new key within 1m; the host keeps its old key)\n" +
		"[wave 2] starting 2 of 5 nodes\n" +
		"[n-000000000003 web-3] ✔ rotated (old key archived; new token bound)\n" +
		"[n-000000000004 web-4] - skipped (disconnected)\n" +
		"[wave 3] starting 1 of 5 nodes\n" +
		"[n-000000000005 web-5] ✔ rotated (old key archived; new token bound)\n" +
		"done in 12.4s: 3 rotated, 1 failed, 1 skipped, 0 not started\n"
	if out != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", out, want)
	}
	if code != exitError {
		t.Errorf("exit %d, want 1 (a host failed)", code)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 3 ||
		!regexp.MustCompile(`^aegisctl: lost the stream of fleet run fr-1 \(.*\); re-attaching after event 4 in [0-9.]+m?s \(attempt 1 of 10\)$`).MatchString(lines[0]) ||
		lines[1] != "aegisctl: re-attached to fleet run fr-1" ||
		lines[2] != "aegisctl: 1 of 5 hosts failed in fleet run fr-1: each ✖ line says why and what to do next" {
		t.Errorf("stderr:\n%s", errOut)
	}
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if len(ff.watches) != 2 || ff.watches[0] != 0 || ff.watches[1] != 4 {
		t.Errorf("watches after %v, want [0 4]", ff.watches)
	}
	if len(ff.starts) != 1 {
		t.Fatalf("%d starts", len(ff.starts))
	}
	s := ff.starts[0]
	if s.GetAction() != edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE || s.GetTarget() != "tags=AnyOf(prod)" || s.GetMode() != edgev1.FleetMode_FLEET_MODE_ROLLING ||
		s.GetBatch() != 2 || s.GetOnError() != edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE || s.GetDeadline().AsDuration() != time.Minute || s.GetKeepOld() != nil {
		t.Errorf("spec sent: %v", s)
	}
}

func TestFleetJSONEventsOnePerLine(t *testing.T) {
	ff := &fakeFleet{events: rotateRunEvents()}
	f := loggedIn(t, ff)
	out, _, code := f.run(t, "", nil, "edge", "fleet", "runs", "watch", "fr-1", "-o", "json")
	if code != exitError {
		t.Errorf("exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(ff.events) {
		t.Fatalf("%d lines for %d events:\n%s", len(lines), len(ff.events), out)
	}
	var types []string
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d is not one JSON object: %v: %s", i+1, err, l)
		}
		types = append(types, m["type"].(string))
		if m["run_id"] != "fr-1" || m["sequence"] != float64(i+1) || m["at"] != "2026-04-28T14:32:11Z" {
			t.Errorf("line %d: %s", i+1, l)
		}
	}
	if got := strings.Join(types, " "); got != "run_started wave_started host_result host_result host_result wave_started host_result host_result wave_started host_result run_finished" {
		t.Errorf("types %s", got)
	}
	if want := `{"type":"host_result","run_id":"fr-1","sequence":5,"at":"2026-04-28T14:32:11Z","wave":1,"node_id":"n-000000000002","name":"web-2","state":"failed","reason":"deadline","message":"no envelope under a new key within 1m; the host keeps its old key"}`; lines[4] != want {
		t.Errorf("host_result:\n got %s\nwant %s", lines[4], want)
	}
	if want := `{"type":"wave_started","run_id":"fr-1","sequence":2,"at":"2026-04-28T14:32:11Z","wave":1,"hosts":2,"total_hosts":5}`; lines[1] != want {
		t.Errorf("wave_started:\n got %s\nwant %s", lines[1], want)
	}
	if want := `{"type":"run_finished","run_id":"fr-1","sequence":11,"at":"2026-04-28T14:32:11Z","state":"failed","counts":{"total":5,"succeeded":3,"failed":1,"skipped":1,"not_started":0},"elapsed":"12.412s","halted_reason":""}`; lines[10] != want {
		t.Errorf("run_finished:\n got %s\nwant %s", lines[10], want)
	}
	if !strings.Contains(lines[0], `"plan":{"action":"keys.rotate","target":"tags=AnyOf(prod)","mode":"rolling=2","on_error":"continue","deadline":"1m","total_hosts":5,"max_concurrency":2,"waves":[{"wave":1,"hosts":[{"node_id":"n-000000000001","name":"web-1"}`) {
		t.Errorf("run_started: %s", lines[0])
	}
}

func TestFleetDryRunDetachAndBadCommandLines(t *testing.T) {
	ff := &fakeFleet{events: rotateRunEvents()}
	f := loggedIn(t, ff)

	out, errOut, code := f.run(t, "", nil, "edge", "fleet", "keys", "rotate", "--target", "tags=AnyOf(prod)", "--mode", "rolling=2", "--dry-run")
	want := "dry run: keys.rotate on 5 hosts selected by tags=AnyOf(prod); nothing was started\n" +
		"mode rolling=2, on-error continue, deadline 1m, at most 2 hosts at once\n" +
		"[wave 1] 2 of 5 nodes\n  n-000000000001 web-1\n  n-000000000002 web-2\n" +
		"[wave 2] 2 of 5 nodes\n  n-000000000003 web-3\n  n-000000000004 web-4\n" +
		"[wave 3] 1 of 5 nodes\n  n-000000000005 web-5\n"
	if code != 0 || out != want || errOut != "" {
		t.Errorf("dry run: exit %d stderr %q stdout:\n%s", code, errOut, out)
	}

	out, errOut, code = f.run(t, "", nil, "edge", "fleet", "token", "refresh", "--target", "all", "--mode", "parallel", "--on-error", "stop-after=2", "--detach")
	if code != 0 || out != "fr-1\n" || errOut != "" {
		t.Errorf("detach: exit %d stdout %q stderr %q", code, out, errOut)
	}

	bad := []struct {
		args []string
		want string
	}{
		{[]string{"keys", "rotate", "--target", "all", "--mode", "rolling=0"}, "aegisctl: --mode rolling=0: N must be a whole number of hosts from 1 to 10000, e.g. rolling=5\n"},
		{[]string{"keys", "rotate", "--target", "all", "--on-error", "stop-after=x"}, "aegisctl: --on-error stop-after=x: N must be a whole number of failed hosts"},
		{[]string{"keys", "rotate", "--mode", "parallel"}, "aegisctl: missing --target: "},
		{[]string{"keys", "rotate", "--target", "all", "--deadline", "-1s"}, "aegisctl: --deadline -1s: give each host a positive duration"},
		{[]string{"keys", "rotate", "--target", "all", "--keep-old", "-1h"}, "aegisctl: --keep-old -1h0m0s: must not be negative"},
		{[]string{"keys", "rotate", "--target", "all", "--dry-run", "--detach"}, "aegisctl: --dry-run starts nothing"},
		{[]string{"keys", "rotate", "--target", "all", "now"}, `aegisctl: unexpected argument "now"`},
		{[]string{"run", "--target", "all"}, "aegisctl: missing the command to run: "},
		{[]string{"run", "--target", "all", "/bin/true", "--dry-run"}, ""}, // CMD's own args: accepted
		{[]string{"keys", "rotate", "--target", "tags=Any(prod)"}, `aegisctl: bad --target: target at column 6: expected AnyOf, AllOf or NoneOf after tags=, got "Any"` + "\n"},
		{[]string{"runs", "watch"}, "aegisctl: missing ID: "},
		{[]string{"runs", "watch", "fr-1", "-o", "yaml"}, `aegisctl: -o must be text or json (got "yaml")`},
		{[]string{"runs", "watch", "fr-1", "fr-2"}, `aegisctl: unexpected argument "fr-2"`},
	}
	for _, b := range bad {
		if b.want == "" {
			continue
		}
		out, errOut, code := f.run(t, "", nil, append([]string{"edge", "fleet"}, b.args...)...)
		if code != exitUsage || out != "" || !strings.HasPrefix(errOut, b.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: exit %d stdout %q stderr %q, want exit 2 and %q", b.args, code, out, errOut, b.want)
		}
	}
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if len(ff.starts) != 1 || ff.plans != 1 {
		t.Errorf("%d starts and %d plans, want the detached one and the dry run only", len(ff.starts), ff.plans)
	}
	if s := ff.starts[0]; s.GetAction() != edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH || s.GetMode() != edgev1.FleetMode_FLEET_MODE_PARALLEL ||
		s.GetOnError() != edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER || s.GetStopAfter() != 2 {
		t.Errorf("detached spec: %v", s)
	}
}

func TestFleetRunSendsTheCommand(t *testing.T) {
	ff := &fakeFleet{events: rotateRunEvents()}
	f := loggedIn(t, ff)
	_, errOut, code := f.run(t, "", nil, "edge", "fleet", "run", "--target", "os=linux", "--cwd", "/tmp", "--detach", "--", "/bin/sh", "-c", "exit 3")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	ff.mu.Lock()
	defer ff.mu.Unlock()
	cr := ff.starts[0].GetCmdRun()
	if ff.starts[0].GetAction() != edgev1.FleetAction_FLEET_ACTION_CMD_RUN || cr.GetCommand() != "/bin/sh" || strings.Join(cr.GetArgs(), "|") != "-c|exit 3" || cr.GetCwd() != "/tmp" {
		t.Errorf("spec %v", ff.starts[0])
	}
}

func TestFleetCtrlCStopsWatchingOnly(t *testing.T) {
	ff := &fakeFleet{events: rotateRunEvents(), hang: true}
	f := loggedIn(t, ff)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb bytes.Buffer
	done := make(chan int)
	go func() {
		done <- RunEnv(ctx, []string{"aegis", "edge", "fleet", "runs", "watch", "fr-1"}, Env{
			Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, HomeDir: func() (string, error) { return f.home, nil },
		})
	}()
	time.Sleep(500 * time.Millisecond)
	cancel()
	code := <-done
	if code != exitExecCancelled {
		t.Errorf("exit %d, want 130", code)
	}
	if want := "aegis: stopped watching; fleet run fr-1 goes on: re-attach with `aegis edge fleet runs watch fr-1`, or stop it with `aegis edge fleet runs cancel fr-1`\n"; errb.String() != want {
		t.Errorf("stderr %q, want %q", errb.String(), want)
	}
	if !strings.Contains(out.String(), "[wave 3] starting 1 of 5 nodes\n") || strings.Contains(out.String(), "done in") {
		t.Errorf("stdout:\n%s", out.String())
	}
}

func TestFleetRunsListAndUnknownRun(t *testing.T) {
	ff := &fakeFleet{events: rotateRunEvents()}
	f := loggedIn(t, ff)
	out, errOut, code := f.run(t, "", nil, "edge", "fleet", "runs", "list")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !regexp.MustCompile(`^ID +ACTION +TARGET +STATE +HOSTS +CREATED\nfr-1 +keys\.rotate +tags=AnyOf\(prod\) +failed +3/1/1/0 +2026-04-28T14:32:11Z\n$`).MatchString(out) {
		t.Errorf("list:\n%s", out)
	}
	out, _, _ = f.run(t, "", nil, "edge", "fleet", "runs", "list", "-o", "json")
	var list struct {
		Runs []fleetRunJSON `json:"runs"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Runs) != 1 || list.Runs[0].Counts.Skipped != 1 || list.Runs[0].Mode != "rolling=2" {
		t.Errorf("list -o json: %v\n%s", err, out)
	}
	out, errOut, code = f.run(t, "", nil, "edge", "fleet", "runs", "watch", "fr-404")
	if code != exitError || out != "" || errOut != "aegisctl: no such fleet run \"fr-404\" in your tenant: see `aegisctl edge fleet runs list`\n" {
		t.Errorf("unknown run: exit %d stdout %q stderr %q", code, out, errOut)
	}
}
