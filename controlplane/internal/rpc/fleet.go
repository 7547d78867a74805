package rpc

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/fleet"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// UpdateHostTags implements EdgeAdminService.UpdateHostTags.
func (a *Admin) UpdateHostTags(ctx context.Context, req *connect.Request[edgev1.UpdateHostTagsRequest]) (*connect.Response[edgev1.UpdateHostTagsResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	h, err := a.cfg.Hosts.UpdateTags(ctx, p, m.GetNodeId(), m.GetAdd(), m.GetRemove())
	if err != nil {
		return nil, a.fail(ctx, "UpdateHostTags", err)
	}
	a.cfg.Logger.InfoContext(ctx, "host tags updated", "operator", p.TokenID, "node", h.Daemon.NodeID, "tags", h.Daemon.Tags)
	return connect.NewResponse(&edgev1.UpdateHostTagsResponse{Host: hostPB(h)}), nil
}

// PlanFleetRun implements EdgeAdminService.PlanFleetRun (--dry-run): nothing changes.
func (a *Admin) PlanFleetRun(ctx context.Context, req *connect.Request[edgev1.PlanFleetRunRequest]) (*connect.Response[edgev1.PlanFleetRunResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	spec, err := specFromPB(req.Msg.GetSpec())
	if err != nil {
		return nil, err
	}
	_, plan, err := a.cfg.Fleet.Plan(ctx, p, spec)
	if err != nil {
		return nil, a.fail(ctx, "PlanFleetRun", err)
	}
	return connect.NewResponse(&edgev1.PlanFleetRunResponse{Plan: planPB(plan)}), nil
}

// StartFleetRun implements EdgeAdminService.StartFleetRun. The run is driven by the
// control plane from here on; the caller may watch it or leave.
func (a *Admin) StartFleetRun(ctx context.Context, req *connect.Request[edgev1.StartFleetRunRequest]) (*connect.Response[edgev1.StartFleetRunResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	spec, err := specFromPB(req.Msg.GetSpec())
	if err != nil {
		return nil, err
	}
	run, plan, err := a.cfg.Fleet.Start(ctx, p, spec)
	if err != nil {
		return nil, a.fail(ctx, "StartFleetRun", err)
	}
	return connect.NewResponse(&edgev1.StartFleetRunResponse{Run: runPB(run), Plan: planPB(plan)}), nil
}

// WatchFleetRun implements EdgeAdminService.WatchFleetRun: the events after
// after_sequence, then the live ones until run_finished.
func (a *Admin) WatchFleetRun(ctx context.Context, req *connect.Request[edgev1.WatchFleetRunRequest], stream *connect.ServerStream[edgev1.WatchFleetRunResponse]) error {
	p, err := a.principal(ctx)
	if err != nil {
		return err
	}
	errSend := errors.New("watcher gone")
	err = a.cfg.Fleet.Watch(ctx, p, req.Msg.GetRunId(), req.Msg.GetAfterSequence(), func(ev fleet.Event) error {
		if err := stream.Send(&edgev1.WatchFleetRunResponse{Event: eventPB(ev)}); err != nil {
			return errSend
		}
		return nil
	})
	if errors.Is(err, errSend) {
		return nil // the watcher left; nothing to tell it
	}
	if err != nil {
		return a.fail(ctx, "WatchFleetRun", err)
	}
	return nil
}

// CancelFleetRun implements EdgeAdminService.CancelFleetRun.
func (a *Admin) CancelFleetRun(ctx context.Context, req *connect.Request[edgev1.CancelFleetRunRequest]) (*connect.Response[edgev1.CancelFleetRunResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	run, err := a.cfg.Fleet.Cancel(ctx, p, req.Msg.GetRunId())
	if err != nil {
		return nil, a.fail(ctx, "CancelFleetRun", err)
	}
	return connect.NewResponse(&edgev1.CancelFleetRunResponse{Run: runPB(run)}), nil
}

// ListFleetRuns implements EdgeAdminService.ListFleetRuns.
func (a *Admin) ListFleetRuns(ctx context.Context, _ *connect.Request[edgev1.ListFleetRunsRequest]) (*connect.Response[edgev1.ListFleetRunsResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	runs, err := a.cfg.Fleet.List(ctx, p)
	if err != nil {
		return nil, a.fail(ctx, "ListFleetRuns", err)
	}
	out := &edgev1.ListFleetRunsResponse{}
	for _, r := range runs {
		out.Runs = append(out.Runs, runPB(r))
	}
	return connect.NewResponse(out), nil
}

// GetFleetRun implements EdgeAdminService.GetFleetRun.
func (a *Admin) GetFleetRun(ctx context.Context, req *connect.Request[edgev1.GetFleetRunRequest]) (*connect.Response[edgev1.GetFleetRunResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	run, plan, hosts, err := a.cfg.Fleet.Get(ctx, p, req.Msg.GetRunId())
	if err != nil {
		return nil, a.fail(ctx, "GetFleetRun", err)
	}
	out := &edgev1.GetFleetRunResponse{Run: runPB(run), Plan: planPB(plan)}
	for _, h := range hosts {
		out.Hosts = append(out.Hosts, hostResultPB(h))
	}
	return connect.NewResponse(out), nil
}

func invalid(msg string) error {
	return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
}

// specFromPB maps the spec; the domain fills defaults and checks the rest.
func specFromPB(m *edgev1.FleetRunSpec) (fleet.Spec, error) {
	s := fleet.Spec{Target: m.GetTarget(), Batch: int(m.GetBatch()), StopAfter: int(m.GetStopAfter())}
	switch m.GetAction() {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		s.Action = fleet.ActionKeysRotate
	case edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH:
		s.Action = fleet.ActionTokenRefresh
	case edgev1.FleetAction_FLEET_ACTION_CMD_RUN:
		s.Action = fleet.ActionCmdRun
	case edgev1.FleetAction_FLEET_ACTION_UNSPECIFIED:
	default:
		return fleet.Spec{}, invalid("unknown fleet action")
	}
	switch m.GetMode() {
	case edgev1.FleetMode_FLEET_MODE_SEQUENTIAL:
		s.Mode = fleet.ModeSequential
	case edgev1.FleetMode_FLEET_MODE_ROLLING:
		s.Mode = fleet.ModeRolling
	case edgev1.FleetMode_FLEET_MODE_PARALLEL:
		s.Mode = fleet.ModeParallel
	case edgev1.FleetMode_FLEET_MODE_UNSPECIFIED:
	default:
		return fleet.Spec{}, invalid("unknown fleet mode")
	}
	switch m.GetOnError() {
	case edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE:
		s.OnError = fleet.PolicyContinue
	case edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER:
		s.OnError = fleet.PolicyStopAfter
	case edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_FAIL_FAST:
		s.OnError = fleet.PolicyFailFast
	case edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_UNSPECIFIED:
	default:
		return fleet.Spec{}, invalid("unknown failure policy")
	}
	var err error
	if s.Deadline, err = durationFromPB(m.GetDeadline(), "deadline"); err != nil {
		return fleet.Spec{}, err
	}
	if s.KeepOld, err = durationFromPB(m.GetKeepOld(), "keep_old"); err != nil {
		return fleet.Spec{}, err
	}
	if c := m.GetCmdRun(); c != nil {
		s.CmdRun = &fleet.CmdRun{Command: c.GetCommand(), Args: c.GetArgs(), Cwd: c.GetCwd(), Env: c.GetEnv()}
	}
	return s, nil
}

func durationFromPB(d *durationpb.Duration, what string) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalid(what + " is not a valid duration")
	}
	return d.AsDuration(), nil
}

func specPB(s fleet.Spec) *edgev1.FleetRunSpec {
	m := &edgev1.FleetRunSpec{Target: s.Target, Batch: int32(s.Batch), StopAfter: int32(s.StopAfter), Deadline: durationpb.New(s.Deadline)}
	switch s.Action {
	case fleet.ActionKeysRotate:
		m.Action = edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE
	case fleet.ActionTokenRefresh:
		m.Action = edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH
	case fleet.ActionCmdRun:
		m.Action = edgev1.FleetAction_FLEET_ACTION_CMD_RUN
	}
	switch s.Mode {
	case fleet.ModeSequential:
		m.Mode = edgev1.FleetMode_FLEET_MODE_SEQUENTIAL
	case fleet.ModeRolling:
		m.Mode = edgev1.FleetMode_FLEET_MODE_ROLLING
	case fleet.ModeParallel:
		m.Mode = edgev1.FleetMode_FLEET_MODE_PARALLEL
	}
	switch s.OnError {
	case fleet.PolicyContinue:
		m.OnError = edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE
	case fleet.PolicyStopAfter:
		m.OnError = edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER
	case fleet.PolicyFailFast:
		m.OnError = edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_FAIL_FAST
	}
	if s.KeepOld > 0 {
		m.KeepOld = durationpb.New(s.KeepOld)
	}
	if c := s.CmdRun; c != nil {
		m.CmdRun = &edgev1.CmdRunArgs{Command: c.Command, Args: c.Args, Cwd: c.Cwd, Env: c.Env}
	}
	return m
}

func planPB(p fleet.Plan) *edgev1.FleetPlan {
	m := &edgev1.FleetPlan{Target: p.Target, TotalHosts: int32(p.TotalHosts), MaxConcurrency: int32(p.MaxConcurrency)}
	for _, w := range p.Waves {
		wm := &edgev1.FleetWave{Number: int32(w.Number)}
		for _, h := range w.Hosts {
			wm.Hosts = append(wm.Hosts, &edgev1.FleetHostRef{NodeId: h.NodeID, Name: h.Name})
		}
		m.Waves = append(m.Waves, wm)
	}
	return m
}

func runStatePB(state string) edgev1.FleetRunState {
	switch state {
	case store.FleetRunRunning:
		return edgev1.FleetRunState_FLEET_RUN_STATE_RUNNING
	case store.FleetRunSucceeded:
		return edgev1.FleetRunState_FLEET_RUN_STATE_SUCCEEDED
	case store.FleetRunFailed:
		return edgev1.FleetRunState_FLEET_RUN_STATE_FAILED
	case store.FleetRunCancelled:
		return edgev1.FleetRunState_FLEET_RUN_STATE_CANCELLED
	}
	return edgev1.FleetRunState_FLEET_RUN_STATE_UNSPECIFIED
}

func runPB(r fleet.Run) *edgev1.FleetRun {
	c := r.Counts
	return &edgev1.FleetRun{
		Id: r.ID, TenantId: r.TenantID, Spec: specPB(r.Spec), State: runStatePB(r.State),
		Counts: &edgev1.FleetRunCounts{
			Total: int32(c.Total), Succeeded: int32(c.Succeeded), Failed: int32(c.Failed),
			Skipped: int32(c.Skipped), NotStarted: int32(c.NotStarted),
		},
		CreatedBy: r.CreatedBy, CreatedAt: ts(r.CreatedAt), FinishedAt: ts(r.FinishedAt), HaltedReason: r.HaltedReason,
	}
}

func hostStatePB(state string) edgev1.FleetHostState {
	switch state {
	case store.FleetHostPending:
		return edgev1.FleetHostState_FLEET_HOST_STATE_PENDING
	case store.FleetHostRunning:
		return edgev1.FleetHostState_FLEET_HOST_STATE_RUNNING
	case store.FleetHostSucceeded:
		return edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED
	case store.FleetHostFailed:
		return edgev1.FleetHostState_FLEET_HOST_STATE_FAILED
	case store.FleetHostSkipped:
		return edgev1.FleetHostState_FLEET_HOST_STATE_SKIPPED
	case store.FleetHostNotStarted:
		return edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED
	}
	return edgev1.FleetHostState_FLEET_HOST_STATE_UNSPECIFIED
}

func hostResultPB(h store.FleetRunHost) *edgev1.FleetHostResult {
	return &edgev1.FleetHostResult{
		NodeId: h.NodeID, Name: h.Name, Wave: int32(h.Wave), State: hostStatePB(h.State), Reason: h.Reason,
		Message: h.Message, ExitCode: h.ExitCode, StartedAt: ts(h.StartedAt), FinishedAt: ts(h.FinishedAt),
	}
}

func eventPB(ev fleet.Event) *edgev1.FleetEvent {
	m := &edgev1.FleetEvent{RunId: ev.RunID, Sequence: ev.Sequence, At: timestamppb.New(ev.At)}
	switch {
	case ev.RunStarted != nil:
		m.Event = &edgev1.FleetEvent_RunStarted{RunStarted: &edgev1.FleetRunStarted{Run: runPB(ev.RunStarted.Run), Plan: planPB(ev.RunStarted.Plan)}}
	case ev.WaveStarted != nil:
		w := ev.WaveStarted
		m.Event = &edgev1.FleetEvent_WaveStarted{WaveStarted: &edgev1.FleetWaveStarted{Wave: int32(w.Wave), Hosts: int32(w.Hosts), TotalHosts: int32(w.TotalHosts)}}
	case ev.HostResult != nil:
		m.Event = &edgev1.FleetEvent_HostResult{HostResult: hostResultPB(*ev.HostResult)}
	case ev.RunFinished != nil:
		m.Event = &edgev1.FleetEvent_RunFinished{RunFinished: &edgev1.FleetRunFinished{Run: runPB(ev.RunFinished.Run), Elapsed: durationpb.New(ev.RunFinished.Elapsed)}}
	}
	return m
}
