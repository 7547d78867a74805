package swarm

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

// FleetResult is a finished fleet run as a watcher saw it.
type FleetResult struct {
	// Started is StartFleetRun's answer (the run as created and its plan).
	Started *edgev1.StartFleetRunResponse
	// Events are every event of the run in sequence order, run_started to
	// run_finished, each once (re-attaching after a restart replays from the last one
	// seen).
	Events []*edgev1.FleetEvent
	// Final is GetFleetRun after run_finished: the run, its plan and every host.
	Final *edgev1.GetFleetRunResponse
	// Reattached counts watches that had to be opened again (control plane restarts).
	Reattached int
	// OnEvent, when set, is called with each event as it arrives (from the
	// watching goroutine), before it is appended to Events.
	OnEvent func(*edgev1.FleetEvent)
}

// Hosts are the final per-host results by node id.
func (r *FleetResult) Hosts() map[string]*edgev1.FleetHostResult {
	m := make(map[string]*edgev1.FleetHostResult, len(r.Final.GetHosts()))
	for _, h := range r.Final.GetHosts() {
		m[h.GetNodeId()] = h
	}
	return m
}

// HostResults are the host_result events in the order they were emitted.
func (r *FleetResult) HostResults() []*edgev1.FleetHostResult {
	var out []*edgev1.FleetHostResult
	for _, ev := range r.Events {
		if h := ev.GetHostResult(); h != nil {
			out = append(out, h)
		}
	}
	return out
}

// RunFleet starts a fleet run and watches it to its end; onEvent may be nil.
func (s *Swarm) RunFleet(ctx context.Context, spec *edgev1.FleetRunSpec, onEvent func(*edgev1.FleetEvent)) (*FleetResult, error) {
	started, err := s.Admin().StartFleetRun(ctx, connect.NewRequest(&edgev1.StartFleetRunRequest{Spec: spec}))
	if err != nil {
		return nil, fmt.Errorf("swarm: start fleet run: %w", err)
	}
	res := &FleetResult{Started: started.Msg, OnEvent: onEvent}
	if err := s.WatchFleetRun(ctx, started.Msg.GetRun().GetId(), res); err != nil {
		return res, err
	}
	return res, nil
}

// WatchFleetRun follows run id until run_finished, appending to res.Events and
// setting res.Final. A watch that breaks (the control plane restarted) is opened
// again after the last sequence seen, until ctx ends.
func (s *Swarm) WatchFleetRun(ctx context.Context, id string, res *FleetResult) error {
	var last uint64
	if n := len(res.Events); n > 0 {
		last = res.Events[n-1].GetSequence()
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			res.Reattached++
			select {
			case <-ctx.Done():
				return fmt.Errorf("swarm: watch fleet run %s after sequence %d: %w", id, last, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
		finished, err := s.watchOnce(ctx, id, &last, res)
		if err != nil {
			return err
		}
		if finished {
			break
		}
	}
	for attempt := 0; ; attempt++ {
		got, err := s.Admin().GetFleetRun(ctx, connect.NewRequest(&edgev1.GetFleetRunRequest{RunId: id}))
		if err == nil {
			res.Final = got.Msg
			return nil
		}
		if connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
			return fmt.Errorf("swarm: get fleet run %s: %w", id, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// watchOnce reads one watch stream; finished says it saw run_finished. Errors that
// a restart explains (transport failures) return (false, nil) so the caller
// re-attaches; answers the server means (NotFound, InvalidArgument, ...) are errors.
func (s *Swarm) watchOnce(ctx context.Context, id string, last *uint64, res *FleetResult) (finished bool, err error) {
	stream, err := s.Admin().WatchFleetRun(ctx, connect.NewRequest(&edgev1.WatchFleetRunRequest{RunId: id, AfterSequence: *last}))
	if err != nil {
		return false, transient(ctx, id, err)
	}
	defer stream.Close()
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if ev.GetSequence() <= *last {
			return false, fmt.Errorf("swarm: watch fleet run %s: sequence %d after %d", id, ev.GetSequence(), *last)
		}
		*last = ev.GetSequence()
		if res.OnEvent != nil {
			res.OnEvent(ev)
		}
		res.Events = append(res.Events, ev)
		if ev.GetRunFinished() != nil {
			return true, nil
		}
	}
	return false, transient(ctx, id, stream.Err())
}

func transient(ctx context.Context, id string, err error) error {
	if err == nil || ctx.Err() != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("swarm: watch fleet run %s: %w", id, ctx.Err())
		}
		return nil
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return nil
	}
	return fmt.Errorf("swarm: watch fleet run %s: %w", id, err)
}
