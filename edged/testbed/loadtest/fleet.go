package loadtest

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// daemons runs the real edged agent for each host in this process, all sharing one
// HTTP/2 client (the agents open connections as stream limits require).
type daemons struct {
	agents []*agent.Agent
	cancel context.CancelFunc
	wg     sync.WaitGroup
	locks  []*keystore.DaemonLock
}

func startDaemons(hosts []*host, hc *http.Client) (*daemons, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ds := &daemons{cancel: cancel}
	quiet := slog.New(slog.DiscardHandler)
	for _, h := range hosts {
		lock, err := h.Dir.LockDaemon()
		if err != nil {
			ds.stop()
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
		ds.locks = append(ds.locks, lock)
		a := agent.New(agent.Config{
			Dir: h.Dir, Logger: quiet, Version: "aegis-loadtest",
			MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second,
			HTTPClient: func(*keystore.Identity) *http.Client { return hc },
		})
		ds.agents = append(ds.agents, a)
		ds.wg.Add(1)
		go func() {
			defer ds.wg.Done()
			_ = a.Run(ctx)
		}()
	}
	return ds, nil
}

func (ds *daemons) stop() {
	ds.cancel()
	ds.wg.Wait()
	for _, l := range ds.locks {
		_ = l.Release()
	}
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
	for {
		if ds.connected() == len(ds.agents) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("only %d of %d daemons Connected: %w", ds.connected(), len(ds.agents), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
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
