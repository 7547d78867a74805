// Package fleet owns fleet runs (DESIGN.md §4): durable, server-side operations over
// the hosts a target selector resolves to, run wave by wave. It plans a run
// (resolution, waves, concurrency), starts it in one transaction, drives it under a
// lease — resuming runs whose driver died, this replica's own after a restart —,
// decides when each host's action is done from what the host's live stream
// verifiably presented (never from the command having been sent), applies the
// failure policy, deadline and cancel, and keeps the numbered event history that
// watchers replay and follow. No proto and no SQL: the rpc package translates, the
// store keeps the rows.
package fleet

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Action is what a run does on each host.
type Action string

const (
	ActionKeysRotate   Action = "keys.rotate"
	ActionTokenRefresh Action = "token.refresh"
	ActionCmdRun       Action = "cmd.run"
)

// Mode is how hosts are grouped into waves.
type Mode string

const (
	ModeSequential Mode = "sequential"
	ModeRolling    Mode = "rolling"
	ModeParallel   Mode = "parallel"
)

// Policy is what a failure does to the rest of the run.
type Policy string

const (
	PolicyContinue  Policy = "continue"
	PolicyStopAfter Policy = "stop-after"
	PolicyFailFast  Policy = "fail-fast"
)

const (
	// DefaultBatch is the rolling wave size when none is given.
	DefaultBatch = 5
	// DefaultDeadline is how long one host may take when none is given.
	DefaultDeadline = 60 * time.Second
	// MaxDeadline bounds how long one host may hold a run.
	MaxDeadline = 24 * time.Hour
	// DefaultMaxConcurrency is the server's cap on hosts in flight in one run
	// (--fleet-max-concurrency).
	DefaultMaxConcurrency = 100
)

// ErrInvalid wraps refusals of malformed specs and selectors.
var ErrInvalid = errors.New("invalid fleet run")

// CmdRun is the command a cmd.run run invokes on every host.
type CmdRun struct {
	Command string            `json:"command"`
	Args    []string          `json:"args,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
}

// Spec is what an operator asks for. Stored (as JSON) with the run, so a resumed
// driver does exactly what was asked.
type Spec struct {
	Action    Action        `json:"action"`
	Target    string        `json:"target"`
	Mode      Mode          `json:"mode"`
	Batch     int           `json:"batch"`
	OnError   Policy        `json:"on_error"`
	StopAfter int           `json:"stop_after"`
	Deadline  time.Duration `json:"deadline"`
	CmdRun    *CmdRun       `json:"cmd_run,omitempty"`
	// KeepOld is how long hosts keep the archived key (0: their default).
	KeepOld time.Duration `json:"keep_old"`
}

// normalize fills the defaults and refuses what cannot run.
func (s Spec) normalize() (Spec, error) {
	bad := func(format string, a ...any) (Spec, error) {
		return Spec{}, fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	switch s.Action {
	case ActionKeysRotate, ActionTokenRefresh:
		if s.CmdRun != nil {
			return bad("cmd_run is only for a cmd.run run")
		}
	case ActionCmdRun:
		if s.CmdRun == nil || s.CmdRun.Command == "" {
			return bad("a cmd.run run needs a command")
		}
	case "":
		return bad("an action is required: keys.rotate, token.refresh or cmd.run")
	default:
		return bad("unknown action %q: want keys.rotate, token.refresh or cmd.run", s.Action)
	}
	switch s.Mode {
	case "", ModeRolling:
		s.Mode = ModeRolling
		if s.Batch == 0 {
			s.Batch = DefaultBatch
		}
		if s.Batch < 0 {
			return bad("rolling batch must be positive, got %d", s.Batch)
		}
	case ModeSequential:
		s.Batch = 1
	case ModeParallel:
		s.Batch = 0 // decided by the plan: all hosts, up to the server's cap
	default:
		return bad("unknown mode %q: want sequential, rolling=N or parallel", s.Mode)
	}
	switch s.OnError {
	case "", PolicyContinue:
		s.OnError, s.StopAfter = PolicyContinue, 0
	case PolicyFailFast:
		s.StopAfter = 1
	case PolicyStopAfter:
		if s.StopAfter <= 0 {
			return bad("stop-after needs a positive number of failures, got %d", s.StopAfter)
		}
	default:
		return bad("unknown failure policy %q: want continue, stop-after=N or fail-fast", s.OnError)
	}
	switch {
	case s.Deadline == 0:
		s.Deadline = DefaultDeadline
	case s.Deadline < 0:
		return bad("the deadline must be positive")
	case s.Deadline > MaxDeadline:
		return bad("the deadline may be at most %s", MaxDeadline)
	}
	if s.KeepOld < 0 {
		return bad("keep_old must not be negative")
	}
	return s, nil
}

// haltedReason says why the policy stopped the run.
func (s Spec) haltedReason() string {
	if s.OnError == PolicyFailFast {
		return "fail-fast: a host failed"
	}
	return "stop-after=" + strconv.Itoa(s.StopAfter) + " reached"
}
