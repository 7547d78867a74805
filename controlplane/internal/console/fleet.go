package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

type runRow struct {
	ID, Action, Target, State, Counts, Created string
}

func actionName(a edgev1.FleetAction) string {
	switch a {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		return "keys.rotate"
	case edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH:
		return "token.refresh"
	case edgev1.FleetAction_FLEET_ACTION_CMD_RUN:
		return "cmd.run"
	}
	return "unknown"
}

func runStateName(s edgev1.FleetRunState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "FLEET_RUN_STATE_"))
}

func (c *Console) fleetPage(w http.ResponseWriter, r *http.Request, s *session) {
	resp, err := c.api.ListFleetRuns(r.Context(), bearer(s, &edgev1.ListFleetRunsRequest{}))
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	var rows []runRow
	for _, run := range resp.Msg.GetRuns() {
		n := run.GetCounts()
		rows = append(rows, runRow{
			ID: run.GetId(), Action: actionName(run.GetSpec().GetAction()), Target: run.GetSpec().GetTarget(),
			State: runStateName(run.GetState()), Created: formatTime(run.GetCreatedAt()),
			Counts: fmt.Sprintf("%d succeeded, %d failed, %d skipped, %d not started of %d", n.GetSucceeded(), n.GetFailed(), n.GetSkipped(), n.GetNotStarted(), n.GetTotal()),
		})
	}
	c.render(w, r, s, http.StatusOK, "fleet", rows)
}

type runView struct {
	Run       runRow
	Running   bool
	EventsURL string
	Halted    string
}

func (c *Console) runPage(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("run")
	resp, err := c.api.GetFleetRun(r.Context(), bearer(s, &edgev1.GetFleetRunRequest{RunId: id}))
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	run := resp.Msg.GetRun()
	c.render(w, r, s, http.StatusOK, "run", runView{
		Run: runRow{ID: run.GetId(), Action: actionName(run.GetSpec().GetAction()), Target: run.GetSpec().GetTarget(),
			State: runStateName(run.GetState()), Created: formatTime(run.GetCreatedAt())},
		Running:   run.GetState() == edgev1.FleetRunState_FLEET_RUN_STATE_RUNNING,
		EventsURL: "/ui/events/fleet/" + url.PathEscape(run.GetId()),
		Halted:    run.GetHaltedReason(),
	})
}

func (c *Console) cancelRun(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("run")
	if _, err := c.api.CancelFleetRun(r.Context(), bearer(s, &edgev1.CancelFleetRunRequest{RunId: id})); err != nil {
		c.apiError(w, r, s, err)
		return
	}
	c.cfg.Logger.Info("console: fleet run cancel requested", "operator", s.tokenID, "run", id)
	http.Redirect(w, r, "/ui/fleet/"+url.PathEscape(id), http.StatusSeeOther)
}

// runLine is one event of a run as the guide prints it.
type runLine struct {
	Seq   uint64 `json:"seq"`
	Kind  string `json:"kind"` // start, wave, host, summary
	State string `json:"state,omitempty"`
	Text  string `json:"text"`
}

func succeededText(a edgev1.FleetAction, r *edgev1.FleetHostResult) string {
	switch a {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		return "rotated (old key archived; new token bound)"
	case edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH:
		return "refreshed (new token bound)"
	case edgev1.FleetAction_FLEET_ACTION_CMD_RUN:
		return fmt.Sprintf("succeeded (exit %d)", r.GetExitCode())
	}
	return "succeeded"
}

func verb(a edgev1.FleetAction) string {
	switch a {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		return "rotated"
	case edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH:
		return "refreshed"
	}
	return "succeeded"
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// lines turns one event into the guide's lines ("[wave 1] starting 5 of 40 nodes",
// "[n-… web-1] ✔ rotated (…)", "done in 12.4s: …"); action is the run's.
func lines(ev *edgev1.FleetEvent, action edgev1.FleetAction) []runLine {
	seq := ev.GetSequence()
	switch e := ev.GetEvent().(type) {
	case *edgev1.FleetEvent_RunStarted:
		run, plan := e.RunStarted.GetRun(), e.RunStarted.GetPlan()
		return []runLine{{Seq: seq, Kind: "start", Text: fmt.Sprintf("fleet run %s: %s on %d hosts selected by %s",
			run.GetId(), actionName(run.GetSpec().GetAction()), plan.GetTotalHosts(), orText(plan.GetTarget(), run.GetSpec().GetTarget()))}}
	case *edgev1.FleetEvent_WaveStarted:
		w := e.WaveStarted
		return []runLine{{Seq: seq, Kind: "wave", Text: fmt.Sprintf("[wave %d] starting %d of %d nodes", w.GetWave(), w.GetHosts(), w.GetTotalHosts())}}
	case *edgev1.FleetEvent_HostResult:
		r := e.HostResult
		label := r.GetNodeId()
		if r.GetName() != "" {
			label += " " + r.GetName()
		}
		why := orText(r.GetReason(), "no reason given")
		if r.GetMessage() != "" && !strings.HasPrefix(r.GetMessage(), r.GetReason()) {
			why = strings.TrimPrefix(r.GetReason()+": "+r.GetMessage(), ": ")
		} else if r.GetMessage() != "" {
			why = r.GetMessage()
		}
		var text, state string
		switch r.GetState() {
		case edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED:
			text, state = "✔ "+succeededText(action, r), "succeeded"
		case edgev1.FleetHostState_FLEET_HOST_STATE_FAILED:
			text, state = "✖ failed ("+why+")", "failed"
			if r.GetReason() == "exit_code" {
				text = fmt.Sprintf("✖ failed (exit %d)", r.GetExitCode())
			}
		case edgev1.FleetHostState_FLEET_HOST_STATE_SKIPPED:
			text, state = "- skipped ("+orText(r.GetReason(), why)+")", "skipped"
		case edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED:
			text, state = "- not started ("+orText(r.GetReason(), why)+")", "not_started"
		default:
			return nil // still in flight
		}
		return []runLine{{Seq: seq, Kind: "host", State: state, Text: "[" + label + "] " + text}}
	case *edgev1.FleetEvent_RunFinished:
		f := e.RunFinished
		run := f.GetRun()
		if action == edgev1.FleetAction_FLEET_ACTION_UNSPECIFIED {
			action = run.GetSpec().GetAction()
		}
		var out []runLine
		switch {
		case run.GetState() == edgev1.FleetRunState_FLEET_RUN_STATE_CANCELLED:
			out = append(out, runLine{Seq: seq, Kind: "halt", Text: "run cancelled: " + orText(run.GetHaltedReason(), "hosts not yet started were left alone")})
		case run.GetHaltedReason() != "":
			out = append(out, runLine{Seq: seq, Kind: "halt", Text: "run halted: " + run.GetHaltedReason()})
		}
		var elapsed time.Duration
		if f.GetElapsed() != nil {
			elapsed = f.GetElapsed().AsDuration()
		}
		n := run.GetCounts()
		out = append(out, runLine{Seq: seq, Kind: "summary", State: runStateName(run.GetState()), Text: fmt.Sprintf("done in %s: %d %s, %d failed, %d skipped, %d not started",
			elapsedText(elapsed), n.GetSucceeded(), verb(action), n.GetFailed(), n.GetSkipped(), n.GetNotStarted())})
		return out
	}
	return nil
}

func elapsedText(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}
