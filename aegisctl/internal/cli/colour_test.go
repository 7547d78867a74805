package cli

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

func TestColourOnlyOnATerminal(t *testing.T) {
	term := func(io.Writer) bool { return true }
	for _, c := range []struct {
		env  map[string]string
		tty  func(io.Writer) bool
		want bool
	}{
		{nil, term, true},
		{map[string]string{"NO_COLOR": "1"}, term, false},
		{map[string]string{"TERM": "dumb"}, term, false},
		{nil, nil, false}, // a bytes.Buffer is no terminal
	} {
		a := &app{env: Env{Getenv: func(k string) string { return c.env[k] }, IsTerminal: c.tty}}
		if got := a.useColour(&bytes.Buffer{}); got != c.want {
			t.Errorf("env %v terminal %v: colour %v, want %v", c.env, c.tty != nil, got, c.want)
		}
	}
	if got := paintHostLine("[n-1 web] ✖ failed (deadline)"); got != "[n-1 web] "+ansiRed+"✖ failed (deadline)"+ansiReset {
		t.Errorf("painted %q", got)
	}
	if got := paintHostLine("[wave 1] starting 5 of 47 nodes"); got != "[wave 1] starting 5 of 47 nodes" {
		t.Errorf("painted a wave line: %q", got)
	}
}

// A fleet run followed on a terminal is coloured; piped, or with NO_COLOR, it is not.
func TestFleetLinesColouredOnATerminalOnly(t *testing.T) {
	ff := &fakeFleet{events: rotateRunEvents()}
	f := loggedIn(t, ff)
	run := func(env map[string]string) string {
		var out, errb bytes.Buffer
		RunEnv(context.Background(), []string{"aegis", "edge", "fleet", "keys", "rotate", "--target", "all"}, Env{
			Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] },
			HomeDir:    func() (string, error) { return f.home, nil },
			IsTerminal: func(io.Writer) bool { return true },
		})
		return out.String()
	}
	if out := run(nil); !strings.Contains(out, ansiGreen+"✔") {
		t.Errorf("no colour on a terminal:\n%s", out)
	}
	if out := run(map[string]string{"NO_COLOR": "1"}); strings.Contains(out, "\x1b[") || !strings.Contains(out, "✔") {
		t.Errorf("NO_COLOR still coloured:\n%q", out)
	}
}

func (f *fakeFleet) CancelFleetRun(_ context.Context, req *connect.Request[edgev1.CancelFleetRunRequest]) (*connect.Response[edgev1.CancelFleetRunResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&edgev1.CancelFleetRunResponse{Run: &edgev1.FleetRun{
		Id: req.Msg.GetRunId(), State: edgev1.FleetRunState_FLEET_RUN_STATE_SUCCEEDED,
	}}), nil
}

// runs cancel on a finished run: exit 1 in text and in JSON alike, nothing cancelled.
func TestCancelFinishedRunSameStatusInTextAndJSON(t *testing.T) {
	f := loggedIn(t, &fakeFleet{events: rotateRunEvents()})
	_, errText, codeText := f.run(t, "", nil, "edge", "fleet", "runs", "cancel", "fr-1")
	out, errJSON, codeJSON := f.run(t, "", nil, "edge", "fleet", "runs", "cancel", "fr-1", "-o", "json")
	if codeText != exitError || codeJSON != exitError {
		t.Fatalf("exit text %d, json %d; want both %d", codeText, codeJSON, exitError)
	}
	if !strings.Contains(errText, "had already finished") || errText != errJSON {
		t.Errorf("stderr text %q json %q", errText, errJSON)
	}
	if !strings.Contains(out, `"state": "succeeded"`) {
		t.Errorf("json stdout %s", out)
	}
}
