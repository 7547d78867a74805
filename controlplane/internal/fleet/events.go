package fleet

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Event kinds as stored.
const (
	KindRunStarted  = "run_started"
	KindWaveStarted = "wave_started"
	KindHostResult  = "host_result"
	KindRunFinished = "run_finished"
)

// Event is one line of a run's history; exactly one of the pointers is set.
type Event struct {
	RunID       string
	Sequence    uint64
	At          time.Time
	RunStarted  *RunStarted
	WaveStarted *WaveStarted
	HostResult  *store.FleetRunHost
	RunFinished *RunFinished
}

// RunStarted opens a run's history.
type RunStarted struct {
	Run  Run  `json:"run"`
	Plan Plan `json:"plan"`
}

// WaveStarted says a wave's hosts are starting.
type WaveStarted struct {
	Wave       int `json:"wave"`
	Hosts      int `json:"hosts"`
	TotalHosts int `json:"total_hosts"`
}

// RunFinished closes a run's history; watchers stop after it.
type RunFinished struct {
	Run     Run           `json:"run"`
	Elapsed time.Duration `json:"elapsed"`
}

func encodeEvent(runID string, at time.Time, payload any) (store.FleetRunEvent, error) {
	var kind string
	switch payload.(type) {
	case RunStarted:
		kind = KindRunStarted
	case WaveStarted:
		kind = KindWaveStarted
	case store.FleetRunHost:
		kind = KindHostResult
	case RunFinished:
		kind = KindRunFinished
	default:
		return store.FleetRunEvent{}, fmt.Errorf("fleet: no event kind for %T", payload)
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return store.FleetRunEvent{}, fmt.Errorf("fleet: encode %s event: %w", kind, err)
	}
	return store.FleetRunEvent{RunID: runID, At: at, Kind: kind, Data: string(b)}, nil
}

func decodeEvent(e store.FleetRunEvent) (Event, error) {
	ev := Event{RunID: e.RunID, Sequence: e.Sequence, At: e.At}
	var dst any
	switch e.Kind {
	case KindRunStarted:
		ev.RunStarted = &RunStarted{}
		dst = ev.RunStarted
	case KindWaveStarted:
		ev.WaveStarted = &WaveStarted{}
		dst = ev.WaveStarted
	case KindHostResult:
		ev.HostResult = &store.FleetRunHost{}
		dst = ev.HostResult
	case KindRunFinished:
		ev.RunFinished = &RunFinished{}
		dst = ev.RunFinished
	default:
		return Event{}, fmt.Errorf("fleet: run %s event %d has unknown kind %q", e.RunID, e.Sequence, e.Kind)
	}
	if err := json.Unmarshal([]byte(e.Data), dst); err != nil {
		return Event{}, fmt.Errorf("fleet: decode run %s event %d: %w", e.RunID, e.Sequence, err)
	}
	return ev, nil
}
