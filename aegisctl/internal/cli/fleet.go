package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/backoff"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	ucli "github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Fleet runs are driven by the control plane (DESIGN.md §4): the CLI only asks for a
// plan, starts a run and follows its event stream. Nothing here loops over hosts, so
// losing this process loses nothing but the view.

// Defaults of the start flags; the control plane has the same ones.
const (
	defaultFleetMode     = "rolling=5"
	defaultFleetOnError  = "continue"
	defaultFleetDeadline = 60 * time.Second
	// maxFleetBatch and maxFleetDeadline only catch typos (rolling=50000, 60h);
	// the control plane has the final word.
	maxFleetBatch    = 10000
	maxFleetDeadline = 24 * time.Hour
)

// Re-attaching a broken watch stream: bounded, with backoff, so a control-plane restart
// is ridden out and a control plane that is gone for good is reported in under a minute.
const (
	watchAttempts    = 10
	watchBackoffBase = 500 * time.Millisecond
	watchBackoffMax  = 5 * time.Second
)

// fleetAction is what one start command asks every host to do, and how its outcomes read.
type fleetAction struct {
	action edgev1.FleetAction
	// name is the contract's spelling (keys.rotate), shown in listings and JSON.
	name string
	// verb counts the successes in the summary ("45 rotated").
	verb string
	// path is the command that starts it, after "edge fleet".
	path string
}

var (
	fleetKeysRotate   = fleetAction{edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE, "keys.rotate", "rotated", "keys rotate"}
	fleetTokenRefresh = fleetAction{edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH, "token.refresh", "refreshed", "token refresh"}
	fleetCmdRun       = fleetAction{edgev1.FleetAction_FLEET_ACTION_CMD_RUN, "cmd.run", "succeeded", "run"}
)

func fleetActionOf(a edgev1.FleetAction) fleetAction {
	switch a {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		return fleetKeysRotate
	case edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH:
		return fleetTokenRefresh
	case edgev1.FleetAction_FLEET_ACTION_CMD_RUN:
		return fleetCmdRun
	}
	return fleetAction{action: a, name: "unknown", verb: "succeeded"}
}

// succeededText is what follows ✔ on a host line.
func (f fleetAction) succeededText(r *edgev1.FleetHostResult) string {
	switch f.action {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		return "rotated (old key archived; new token bound)"
	case edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH:
		return "refreshed (new token bound)"
	case edgev1.FleetAction_FLEET_ACTION_CMD_RUN:
		return fmt.Sprintf("succeeded (exit %d)", r.GetExitCode())
	}
	return "succeeded"
}

// fleetSelectorHelp, fleetModeHelp and fleetOnErrorHelp teach the choices; they follow
// the guide's "Recommended modes" and "Recommended failure policy" tables.
const fleetSelectorHelp = "SEL (--target) picks the hosts: all, tags=AnyOf(a,b), tags=AllOf(a,b), tags=NoneOf(a),\n" +
	"nodes=<id>,<id>, name=<glob>, os=linux, combined with ';' (AND). Quote it: ( ) and ;\n" +
	"mean something to the shell. See what it selects with `%[1]s edge hosts list --target SEL`.\n"

const fleetModeHelp = "--mode, how many hosts at once:\n" +
	"  sequential    one host at a time. Tiny fleets (5 or fewer), or when every host needs\n" +
	"                human attention.\n" +
	"  rolling=N     waves of N hosts (default rolling=5). Production fleets: a batch of 5..10\n" +
	"                bounds the control plane's load while keeping the run flowing.\n" +
	"  parallel      every host at once, still capped by the control plane (the plan shows the\n" +
	"                cap). Read-only environments, or genuine emergencies where you accept the\n" +
	"                load spike.\n" +
	"A wave is the plan's group of N hosts and the most hosts in flight at once. With\n" +
	"--on-error continue, waves flow: when a host finishes, the next one starts, from this wave\n" +
	"or the next (announced \"[wave N] starting\"), so one slow host holds only its own slot,\n" +
	"for at most --deadline. With stop-after=N or fail-fast, a wave starts only once the one\n" +
	"before it has finished, since its failures decide whether the run goes on.\n"

const fleetOnErrorHelp = "--on-error, what a failed host does to the rest:\n" +
	"  continue      (default) every host that can do it does it; you handle the failures\n" +
	"                separately.\n" +
	"  stop-after=N  once N hosts have failed, counted across the whole run (not per wave), no\n" +
	"                further host starts; hosts in flight finish and the rest are reported\n" +
	"                \"not started (halted)\". When a threshold matters: \"if more than 3 hosts\n" +
	"                fail, halt and investigate\".\n" +
	"  fail-fast     stop-after=1. Almost never right for rotation: one transient failure would\n" +
	"                halt the rest of the fleet.\n" +
	"The guide's names work too: ContinueOnError, StopAfter(3), FailFast; and for --mode\n" +
	"Sequential, Rolling=5, Parallel.\n"

const fleetOutputHelp = "The control plane drives the run; this command starts it and prints its events as they\n" +
	"happen, one line per host:\n" +
	"  [wave 1] starting 5 of 47 nodes\n" +
	"  [n-7a3b2f0c91d4 web-east-1] ✔ %[2]s\n" +
	"  [n-4e7c80aa01b2 db-mirror-2] ✖ failed (<reason>: <what happened and what to do>)\n" +
	"  [n-3b1d9f00c2e1 bastion] - skipped (disconnected)\n" +
	"  [n-5d0e11aa93c7 cache-3] - not started (halted)\n" +
	"  done in 12.4s: 45 %[3]s, 1 failed, 1 skipped, 0 not started\n" +
	"A host not connected when its wave starts is skipped, which is not a failure (revoked\n" +
	"hosts too). --deadline bounds each host: one that misses it fails with reason deadline.\n" +
	"Ctrl-C stops watching, not the run: re-attach with `%[1]s edge fleet runs watch ID`, stop\n" +
	"it with `%[1]s edge fleet runs cancel ID`. If the stream breaks (a control-plane restart)\n" +
	"this command re-attaches by itself and goes on where it was.\n\n" +
	"--dry-run prints the hosts SEL selects and the waves, and starts nothing.\n" +
	"--detach starts the run, prints its id alone and exits.\n" +
	"-o json prints one JSON object per event per line: type (run_started, wave_started,\n" +
	"host_result, run_finished), run_id, sequence, at, then wave, hosts, total_hosts\n" +
	"(wave_started); wave, node_id, name, state, reason, message, exit_code (host_result);\n" +
	"state, counts, elapsed, halted_reason (run_finished).\n\n" +
	"Exit status: 0 when no host failed; 1 when any host failed (or the run was cancelled);\n" +
	"2 a bad command line (nothing is started); 130 Ctrl-C (the run goes on).\n"

func (a *app) fleetCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "fleet",
		Usage:     "rotate keys, refresh tokens or run a command across many hosts, wave by wave (operator)",
		UsageText: a.name + " edge fleet keys rotate|token refresh|run|runs",
		Description: "A fleet run is stored and driven by the control plane: it goes on if this command is\n" +
			"interrupted, and survives a control-plane restart.\n\n" +
			fmt.Sprintf(fleetSelectorHelp, a.name) + "\n" + fleetModeHelp + "\n" + fleetOnErrorHelp + "\n" +
			"Example:\n" +
			"  " + a.name + " edge fleet keys rotate --target 'tags=AnyOf(potentially-affected,prod)' \\\n" +
			"      --mode rolling=5 --on-error continue --deadline 60s\n" +
			"  " + a.name + " edge fleet run --target 'os=linux' -- /usr/bin/uptime\n" +
			"  " + a.name + " edge fleet runs list",
		Subcommands: []*ucli.Command{
			{
				Name:        "keys",
				Usage:       "rotate the node keys of many hosts",
				UsageText:   a.name + " edge fleet keys rotate --target SEL [flags]",
				Description: "Example:\n  " + a.name + " edge fleet keys rotate --target 'tags=AnyOf(prod)' --dry-run",
				Subcommands: []*ucli.Command{a.fleetStartCommand("rotate", fleetKeysRotate)},
			},
			{
				Name:        "token",
				Usage:       "refresh the node tokens of many hosts",
				UsageText:   a.name + " edge fleet token refresh --target SEL [flags]",
				Description: "Example:\n  " + a.name + " edge fleet token refresh --target 'tags=AnyOf(prod)'",
				Subcommands: []*ucli.Command{a.fleetStartCommand("refresh", fleetTokenRefresh)},
			},
			a.fleetStartCommand("run", fleetCmdRun),
			a.fleetRunsCommand(),
		},
	}
}

// fleetStartCommand is one of the three commands that start a run; they share their
// flags, parsing, planning and following.
func (a *app) fleetStartCommand(name string, act fleetAction) *ucli.Command {
	usageText := a.name + " edge fleet " + act.path + " --target SEL [--mode sequential|rolling=N|parallel]\n" +
		"    [--on-error continue|stop-after=N|fail-fast] [--deadline 60s]"
	var what, example string
	flags := []ucli.Flag{
		&ucli.StringFlag{Name: "target", Usage: "which hosts: a target selector (required; quote it)"},
		&ucli.StringFlag{Name: "mode", Value: defaultFleetMode, Usage: "sequential, rolling=N or parallel"},
		&ucli.StringFlag{Name: "on-error", Value: defaultFleetOnError, Usage: "continue, stop-after=N or fail-fast"},
		&ucli.DurationFlag{Name: "deadline", Value: defaultFleetDeadline, Usage: "how long each host has; one that misses it fails", DefaultText: "60s"},
	}
	switch act.action {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		usageText += " [--keep-old D]"
		flags = append(flags, &ucli.DurationFlag{Name: "keep-old", Usage: "how long hosts keep the archived old key", DefaultText: "each host's own, 24h"})
		what = "Every selected host rotates its Ed25519 node key the way `" + a.name + " edge keys rotate` does on\n" +
			"it, without dropping its connection. A host counts as rotated only once its live stream\n" +
			"has presented an envelope signed with the new key and carrying the new token: verified,\n" +
			"not assumed. A host that fails keeps its old key and keeps working; its line says what\n" +
			"to do (usually `" + a.name + " edge status` on it, then `" + a.name + " edge keys rotate` there).\n\n"
		example = "Example:\n" +
			"  " + a.name + " edge fleet keys rotate --target 'tags=AnyOf(potentially-affected,prod)' \\\n" +
			"      --mode rolling=5 --on-error continue --deadline 60s\n" +
			"  " + a.name + " edge fleet keys rotate --target all --dry-run\n" +
			"  " + a.name + " edge fleet keys rotate --target 'name=web-*' --mode sequential --on-error stop-after=3 --detach"
	case edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH:
		what = "Every selected host gets a fresh NodeSecurityToken with its existing key, the way\n" +
			"`" + a.name + " edge token refresh` does on it: after a scope, role or security-context change.\n" +
			"A host counts as refreshed once its live stream presents the new token.\n\n"
		example = "Example:\n" +
			"  " + a.name + " edge fleet token refresh --target 'tags=AnyOf(prod)'\n" +
			"  " + a.name + " edge fleet token refresh --target all --mode parallel -o json"
	case edgev1.FleetAction_FLEET_ACTION_CMD_RUN:
		usageText += " [--cwd DIR] -- CMD [ARGS...]"
		flags = append(flags, &ucli.StringFlag{Name: "cwd", Usage: "working directory on the hosts (default: their policy's)"})
		what = "Every selected host runs CMD with ARGS directly (no shell), as `" + a.name + " edge exec` does,\n" +
			"if its local security policy allows it. A host succeeds on exit 0; any other exit code,\n" +
			"a denial or a timeout fails it. The output is not kept: use `" + a.name + " edge exec` on one\n" +
			"host to see it.\n\n"
		example = "Example:\n" +
			"  " + a.name + " edge fleet run --target 'os=linux' -- /usr/bin/uptime\n" +
			"  " + a.name + " edge fleet run --target 'tags=AllOf(web,prod)' --on-error stop-after=2 -- /usr/bin/systemctl is-active nginx"
	}
	usageText += " [--dry-run] [--detach] [-o json]"
	flags = append(flags,
		&ucli.BoolFlag{Name: "dry-run", Usage: "print the selected hosts and the waves; start nothing"},
		&ucli.BoolFlag{Name: "detach", Usage: "start the run, print its id and exit (follow it with: runs watch ID)"},
		outputFlag,
	)
	return &ucli.Command{
		Name:      name,
		Usage:     "start a fleet run of " + act.name + " (operator)",
		UsageText: usageText,
		Description: what + fmt.Sprintf(fleetSelectorHelp, a.name) + "\n" + fleetModeHelp + "\n" + fleetOnErrorHelp + "\n" +
			fmt.Sprintf(fleetOutputHelp, a.name, act.succeededText(&edgev1.FleetHostResult{}), act.verb) + "\n" + example,
		Flags:  flags,
		Action: func(c *ucli.Context) error { return a.fleetStart(c, act) },
	}
}

// parseFleetMode reads --mode: sequential, rolling=N or parallel, in any case, so the
// guide's Sequential, Rolling=5 and Parallel work as written.
func parseFleetMode(s string) (edgev1.FleetMode, int32, error) {
	name, arg, hasArg := strings.Cut(strings.TrimSpace(s), "=")
	switch strings.ToLower(name) {
	case "sequential", "parallel":
		if hasArg {
			return 0, 0, fmt.Errorf("--mode %s takes no =N (only rolling=N does)", name)
		}
		if strings.EqualFold(name, "sequential") {
			return edgev1.FleetMode_FLEET_MODE_SEQUENTIAL, 1, nil
		}
		return edgev1.FleetMode_FLEET_MODE_PARALLEL, 0, nil
	case "rolling":
		if !hasArg {
			return 0, 0, errors.New("--mode rolling needs a batch size: rolling=N, e.g. rolling=5")
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 || n > maxFleetBatch {
			return 0, 0, fmt.Errorf("--mode rolling=%s: N must be a whole number of hosts from 1 to %d, e.g. rolling=5", arg, maxFleetBatch)
		}
		return edgev1.FleetMode_FLEET_MODE_ROLLING, int32(n), nil
	}
	return 0, 0, fmt.Errorf("--mode %q: expected sequential, rolling=N or parallel (any case: Sequential, Rolling=5, Parallel)", s)
}

// parseFleetOnError reads --on-error: continue, stop-after=N or fail-fast, or the
// guide's names for them, ContinueOnError, StopAfter(N) and FailFast.
func parseFleetOnError(s string) (edgev1.FleetFailurePolicy, int32, error) {
	name, arg, hasArg := strings.Cut(strings.TrimSpace(s), "=")
	if !hasArg {
		if n, a, ok := strings.Cut(name, "("); ok && strings.HasSuffix(a, ")") && strings.EqualFold(n, "StopAfter") {
			name, arg, hasArg = "stop-after", strings.TrimSuffix(a, ")"), true
		}
	}
	switch strings.ToLower(name) {
	case "continueonerror":
		name = "continue"
	case "failfast":
		name = "fail-fast"
	}
	switch strings.ToLower(name) {
	case "continue", "fail-fast":
		if hasArg {
			return 0, 0, fmt.Errorf("--on-error %s takes no =N (only stop-after=N does)", name)
		}
		if strings.EqualFold(name, "continue") {
			return edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE, 0, nil
		}
		return edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_FAIL_FAST, 1, nil
	case "stop-after":
		if !hasArg {
			return 0, 0, errors.New("--on-error stop-after needs a count: stop-after=N, e.g. stop-after=3")
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 || n > maxFleetBatch {
			return 0, 0, fmt.Errorf("--on-error stop-after=%s: N must be a whole number of failed hosts from 1 to %d, e.g. stop-after=3", arg, maxFleetBatch)
		}
		return edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER, int32(n), nil
	}
	return 0, 0, fmt.Errorf("--on-error %q: expected continue, stop-after=N or fail-fast (or ContinueOnError, StopAfter(N), FailFast)", s)
}

// formatFleetMode and formatFleetOnError are the flags' spelling of a stored spec.
func formatFleetMode(s *edgev1.FleetRunSpec) string {
	switch s.GetMode() {
	case edgev1.FleetMode_FLEET_MODE_SEQUENTIAL:
		return "sequential"
	case edgev1.FleetMode_FLEET_MODE_ROLLING:
		return fmt.Sprintf("rolling=%d", s.GetBatch())
	case edgev1.FleetMode_FLEET_MODE_PARALLEL:
		return "parallel"
	}
	return "-"
}

func formatFleetOnError(s *edgev1.FleetRunSpec) string {
	switch s.GetOnError() {
	case edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_CONTINUE:
		return "continue"
	case edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_STOP_AFTER:
		return fmt.Sprintf("stop-after=%d", s.GetStopAfter())
	case edgev1.FleetFailurePolicy_FLEET_FAILURE_POLICY_FAIL_FAST:
		return "fail-fast"
	}
	return "-"
}

// shortDuration prints 60s as "1m", 90s as "1m30s", 1.5s as "1.5s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// jsonDuration is the one form of a duration in -o json: Go's duration syntax (what
// --deadline and --ttl take) rounded to the millisecond, without zero trailing units:
// "1m", "1m30s", "12.4s", "250ms".
func jsonDuration(d time.Duration) string {
	return shortDuration(d.Round(time.Millisecond))
}

// elapsedText is the summary's "12.4s" (tenths of a second, then minutes as Go spells them).
func elapsedText(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(100 * time.Millisecond).String()
}

// fleetSpec builds the run's spec from the command line; every mistake is a usage error,
// found before anything is sent.
func fleetSpec(c *ucli.Context, act fleetAction) (*edgev1.FleetRunSpec, error) {
	target := strings.TrimSpace(c.String("target"))
	if target == "" {
		return nil, usagef("missing --target: which hosts, e.g. --target 'tags=AnyOf(prod)' or --target all (see `%s --help`)", c.Command.HelpName)
	}
	mode, batch, err := parseFleetMode(c.String("mode"))
	if err != nil {
		return nil, usagef("%v", err)
	}
	policy, stopAfter, err := parseFleetOnError(c.String("on-error"))
	if err != nil {
		return nil, usagef("%v", err)
	}
	deadline := c.Duration("deadline")
	if deadline <= 0 || deadline > maxFleetDeadline {
		return nil, usagef("--deadline %s: give each host a positive duration of at most %s, e.g. --deadline 60s", deadline, shortDuration(maxFleetDeadline))
	}
	spec := &edgev1.FleetRunSpec{
		Action: act.action, Target: target, Mode: mode, Batch: batch,
		OnError: policy, StopAfter: stopAfter, Deadline: durationpb.New(deadline),
	}
	switch act.action {
	case edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE:
		if keep := c.Duration("keep-old"); keep < 0 {
			return nil, usagef("--keep-old %s: must not be negative (0 means each host's own default)", keep)
		} else if keep > 0 {
			spec.KeepOld = durationpb.New(keep)
		}
		if err := noArgs(c); err != nil {
			return nil, err
		}
	case edgev1.FleetAction_FLEET_ACTION_CMD_RUN:
		cmd, err := fleetCmdArgs(c)
		if err != nil {
			return nil, err
		}
		spec.CmdRun = &edgev1.CmdRunArgs{Command: cmd[0], Args: cmd[1:], Cwd: c.String("cwd")}
	default:
		if err := noArgs(c); err != nil {
			return nil, err
		}
	}
	return spec, nil
}

// fleetCmdArgs is the CMD [ARGS...] of `fleet run`, after an optional "--".
func fleetCmdArgs(c *ucli.Context) ([]string, error) {
	args := c.Args().Slice()
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	} else if len(args) > 0 && strings.HasPrefix(args[0], "-") {
		return nil, usagef("flags go before --, and the command after it: %s", c.Command.UsageText)
	}
	if len(args) == 0 {
		return nil, usagef("missing the command to run: %s -- CMD [ARGS...]", c.Command.HelpName+" --target SEL")
	}
	return args, nil
}

// fleetSpecError maps what the control plane refuses in a spec to one line; a bad
// selector or spec is the command line's fault (exit 2), and nothing was stored.
func (a *app) fleetSpecError(err error, helpName, server string) error {
	// The control plane says "invalid fleet run: target at column 6: ..."; the first
	// words add nothing to "bad --target:".
	msg := strings.TrimPrefix(connectMessage(err), "invalid fleet run: ")
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument:
		switch {
		case strings.Contains(msg, "selects no hosts"):
			return usagef("--target selects no hosts: nothing started (see what a selector selects with `%s edge hosts list --target SEL`)", a.name)
		case strings.Contains(msg, "column"), strings.Contains(msg, "target"), strings.Contains(msg, "selector"):
			return usagef("bad --target: %s", orDefault(msg, "invalid selector"))
		}
		return usagef("%s: run `%s --help`", orDefault(msg, "invalid fleet run"), helpName)
	case connect.CodePermissionDenied:
		return errors.New("your API token may not start fleet runs: an operator or admin token is needed")
	}
	return a.rpcError(err, server)
}

func (a *app) fleetStart(c *ucli.Context, act fleetAction) error {
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	spec, err := fleetSpec(c, act)
	if err != nil {
		return err
	}
	if c.Bool("dry-run") && c.Bool("detach") {
		return usagef("--dry-run starts nothing, so there is nothing to --detach from: give one of them")
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	if c.Bool("dry-run") {
		ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
		defer cancel()
		resp, err := client.PlanFleetRun(ctx, connect.NewRequest(&edgev1.PlanFleetRunRequest{Spec: spec}))
		if err != nil {
			return a.fleetSpecError(err, c.Command.HelpName, p.Server)
		}
		return a.printFleetPlan(out, spec, resp.Msg.GetPlan())
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.StartFleetRun(ctx, connect.NewRequest(&edgev1.StartFleetRunRequest{Spec: spec}))
	if err != nil {
		return a.fleetSpecError(err, c.Command.HelpName, p.Server)
	}
	run := resp.Msg.GetRun()
	if c.Bool("detach") {
		if out == "json" {
			return writeJSON(a.env.Stdout, toFleetRunJSON(run))
		}
		fmt.Fprintln(a.env.Stdout, run.GetId())
		return nil
	}
	return a.watchFleetRun(c.Context, run.GetId(), out)
}

// fleetPlanJSON is the -o json shape of --dry-run.
type fleetPlanJSON struct {
	Action         string          `json:"action"`
	Target         string          `json:"target"`
	Mode           string          `json:"mode"`
	OnError        string          `json:"on_error"`
	Deadline       string          `json:"deadline"`
	TotalHosts     int32           `json:"total_hosts"`
	MaxConcurrency int32           `json:"max_concurrency"`
	Waves          []fleetWaveJSON `json:"waves"`
}

type fleetWaveJSON struct {
	Wave  int32              `json:"wave"`
	Hosts []fleetHostRefJSON `json:"hosts"`
}

type fleetHostRefJSON struct {
	NodeID string `json:"node_id"`
	Name   string `json:"name"`
}

func toFleetPlanJSON(spec *edgev1.FleetRunSpec, plan *edgev1.FleetPlan) fleetPlanJSON {
	j := fleetPlanJSON{
		Action: fleetActionOf(spec.GetAction()).name, Target: orDefault(plan.GetTarget(), spec.GetTarget()),
		Mode: formatFleetMode(spec), OnError: formatFleetOnError(spec), Deadline: shortDuration(spec.GetDeadline().AsDuration()),
		TotalHosts: plan.GetTotalHosts(), MaxConcurrency: plan.GetMaxConcurrency(), Waves: []fleetWaveJSON{},
	}
	for _, w := range plan.GetWaves() {
		wj := fleetWaveJSON{Wave: w.GetNumber(), Hosts: []fleetHostRefJSON{}}
		for _, h := range w.GetHosts() {
			wj.Hosts = append(wj.Hosts, fleetHostRefJSON{NodeID: h.GetNodeId(), Name: h.GetName()})
		}
		j.Waves = append(j.Waves, wj)
	}
	return j
}

func (a *app) printFleetPlan(out string, spec *edgev1.FleetRunSpec, plan *edgev1.FleetPlan) error {
	j := toFleetPlanJSON(spec, plan)
	if out == "json" {
		return writeJSON(a.env.Stdout, j)
	}
	w := a.env.Stdout
	fmt.Fprintf(w, "dry run: %s on %s selected by %s; nothing was started\n", j.Action, plural(int(j.TotalHosts), "host", "hosts"), j.Target)
	fmt.Fprintf(w, "mode %s, on-error %s, deadline %s, at most %s at once\n", j.Mode, j.OnError, j.Deadline, plural(int(j.MaxConcurrency), "host", "hosts"))
	for _, wave := range j.Waves {
		fmt.Fprintf(w, "[wave %d] %d of %s\n", wave.Wave, len(wave.Hosts), plural(int(j.TotalHosts), "node", "nodes"))
		for _, h := range wave.Hosts {
			fmt.Fprintf(w, "  %s %s\n", h.NodeID, orDash(h.Name))
		}
	}
	return nil
}

// fleetEventJSON is the -o json shape of one event: the fields of its type, under
// stable names (exit_code only for cmd.run).
type fleetEventJSON struct {
	Type     string  `json:"type"`
	RunID    string  `json:"run_id"`
	Sequence uint64  `json:"sequence"`
	At       *string `json:"at"`
	// run_started
	Plan *fleetPlanJSON `json:"plan,omitempty"`
	// wave_started and host_result
	Wave       int32  `json:"wave,omitempty"`
	Hosts      *int32 `json:"hosts,omitempty"`
	TotalHosts *int32 `json:"total_hosts,omitempty"`
	NodeID     string `json:"node_id,omitempty"`
	Name       string `json:"name,omitempty"`
	// host_result (a host's state) and run_finished (the run's)
	State    string  `json:"state,omitempty"`
	Reason   *string `json:"reason,omitempty"`
	Message  *string `json:"message,omitempty"`
	ExitCode *int32  `json:"exit_code,omitempty"`
	// run_finished
	Counts       *fleetCountsJSON `json:"counts,omitempty"`
	Elapsed      string           `json:"elapsed,omitempty"`
	HaltedReason *string          `json:"halted_reason,omitempty"`
}

type fleetCountsJSON struct {
	Total      int32 `json:"total"`
	Succeeded  int32 `json:"succeeded"`
	Failed     int32 `json:"failed"`
	Skipped    int32 `json:"skipped"`
	NotStarted int32 `json:"not_started"`
}

func toFleetCountsJSON(c *edgev1.FleetRunCounts) fleetCountsJSON {
	return fleetCountsJSON{Total: c.GetTotal(), Succeeded: c.GetSucceeded(), Failed: c.GetFailed(), Skipped: c.GetSkipped(), NotStarted: c.GetNotStarted()}
}

func fleetHostStateName(s edgev1.FleetHostState) string {
	if s == edgev1.FleetHostState_FLEET_HOST_STATE_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "FLEET_HOST_STATE_"))
}

func fleetRunStateName(s edgev1.FleetRunState) string {
	if s == edgev1.FleetRunState_FLEET_RUN_STATE_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "FLEET_RUN_STATE_"))
}

// fleetPrinter turns a run's events into the guide's lines (or JSON lines) and keeps
// what the summary, the re-attach and the exit status need.
type fleetPrinter struct {
	w    io.Writer
	json *json.Encoder
	act  fleetAction
	// last is the sequence of the last event printed: a re-attach asks for what follows.
	last     uint64
	finished *edgev1.FleetRunFinished
	// colour marks host lines (text on a terminal only).
	colour bool
}

func newFleetPrinter(w io.Writer, out string) *fleetPrinter {
	p := &fleetPrinter{w: w, act: fleetActionOf(edgev1.FleetAction_FLEET_ACTION_UNSPECIFIED)}
	if out == "json" {
		p.json = json.NewEncoder(w)
	}
	return p
}

// hostLine is one host's outcome as the guide prints it ("" for a host still in flight).
func (f fleetAction) hostLine(r *edgev1.FleetHostResult) string {
	label := r.GetNodeId()
	if r.GetName() != "" {
		label += " " + r.GetName()
	}
	why := func() string {
		reason, msg := r.GetReason(), r.GetMessage()
		switch {
		case reason == "":
			return orDefault(msg, "no reason given")
		case msg == "" || strings.HasPrefix(msg, reason):
			return orDefault(msg, reason)
		}
		return reason + ": " + msg
	}
	var text string
	switch r.GetState() {
	case edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED:
		text = "✔ " + f.succeededText(r)
	case edgev1.FleetHostState_FLEET_HOST_STATE_FAILED:
		if r.GetReason() == "exit_code" {
			text = fmt.Sprintf("✖ failed (exit %d)", r.GetExitCode())
		} else {
			text = "✖ failed (" + why() + ")"
		}
	case edgev1.FleetHostState_FLEET_HOST_STATE_SKIPPED:
		text = "- skipped (" + orDefault(r.GetReason(), why()) + ")"
	case edgev1.FleetHostState_FLEET_HOST_STATE_NOT_STARTED:
		text = "- not started (" + orDefault(r.GetReason(), why()) + ")"
	default:
		return ""
	}
	return "[" + label + "] " + text
}

// summaryLine is the run's last line: "done in 12.4s: 45 rotated, 1 failed, ...".
func (f fleetAction) summaryLine(fin *edgev1.FleetRunFinished) string {
	c := fin.GetRun().GetCounts()
	elapsed := time.Duration(0)
	if fin.GetElapsed() != nil {
		elapsed = fin.GetElapsed().AsDuration()
	} else if start, end := asTime(fin.GetRun().GetCreatedAt()), asTime(fin.GetRun().GetFinishedAt()); !start.IsZero() && end.After(start) {
		elapsed = end.Sub(start)
	}
	return fmt.Sprintf("done in %s: %d %s, %d failed, %d skipped, %d not started",
		elapsedText(elapsed), c.GetSucceeded(), f.verb, c.GetFailed(), c.GetSkipped(), c.GetNotStarted())
}

// event prints one event; it returns false for one already printed (a replay overlap).
func (p *fleetPrinter) event(ev *edgev1.FleetEvent) bool {
	if ev == nil || ev.GetSequence() != 0 && ev.GetSequence() <= p.last {
		return false
	}
	p.last = max(p.last, ev.GetSequence())
	j := fleetEventJSON{RunID: ev.GetRunId(), Sequence: ev.GetSequence(), At: timePtr(asTime(ev.GetAt()))}
	var line []string
	switch e := ev.GetEvent().(type) {
	case *edgev1.FleetEvent_RunStarted:
		run, plan := e.RunStarted.GetRun(), e.RunStarted.GetPlan()
		p.act = fleetActionOf(run.GetSpec().GetAction())
		pj := toFleetPlanJSON(run.GetSpec(), plan)
		j.Type, j.Plan = "run_started", &pj
		line = append(line, fmt.Sprintf("fleet run %s: %s on %s selected by %s (mode %s, on-error %s, deadline %s)",
			orDefault(run.GetId(), ev.GetRunId()), pj.Action, plural(int(pj.TotalHosts), "host", "hosts"), pj.Target, pj.Mode, pj.OnError, pj.Deadline))
	case *edgev1.FleetEvent_WaveStarted:
		w := e.WaveStarted
		hosts, total := w.GetHosts(), w.GetTotalHosts()
		j.Type, j.Wave, j.Hosts, j.TotalHosts = "wave_started", w.GetWave(), &hosts, &total
		line = append(line, fmt.Sprintf("[wave %d] starting %d of %s", w.GetWave(), hosts, plural(int(total), "node", "nodes")))
	case *edgev1.FleetEvent_HostResult:
		r := e.HostResult
		reason, msg := r.GetReason(), r.GetMessage()
		j.Type, j.Wave, j.NodeID, j.Name, j.State, j.Reason, j.Message = "host_result", r.GetWave(), r.GetNodeId(), r.GetName(),
			fleetHostStateName(r.GetState()), &reason, &msg
		if p.act.action == edgev1.FleetAction_FLEET_ACTION_CMD_RUN {
			code := r.GetExitCode()
			j.ExitCode = &code
		}
		if l := p.act.hostLine(r); l != "" {
			line = append(line, l)
		}
	case *edgev1.FleetEvent_RunFinished:
		f := e.RunFinished
		p.finished = f
		if p.act.action == edgev1.FleetAction_FLEET_ACTION_UNSPECIFIED {
			p.act = fleetActionOf(f.GetRun().GetSpec().GetAction())
		}
		counts, halted := toFleetCountsJSON(f.GetRun().GetCounts()), f.GetRun().GetHaltedReason()
		j.Type, j.State, j.Counts, j.HaltedReason = "run_finished", fleetRunStateName(f.GetRun().GetState()), &counts, &halted
		if f.GetElapsed() != nil {
			j.Elapsed = jsonDuration(f.GetElapsed().AsDuration())
		}
		switch {
		case f.GetRun().GetState() == edgev1.FleetRunState_FLEET_RUN_STATE_CANCELLED:
			line = append(line, "run cancelled: "+orDefault(halted, "hosts not yet started were left alone"))
		case halted != "":
			line = append(line, "run halted: "+halted)
		}
		line = append(line, p.act.summaryLine(f))
	default:
		j.Type = "unknown"
	}
	if p.json != nil {
		_ = p.json.Encode(j)
		return true
	}
	for _, l := range line {
		if p.colour {
			l = paintHostLine(l)
		}
		fmt.Fprintln(p.w, l)
	}
	return true
}

// outcome is the exit status of a finished run: 0 only when no host failed.
func (p *fleetPrinter) outcome(a *app, runID string) error {
	run := p.finished.GetRun()
	c := run.GetCounts()
	switch {
	case c.GetFailed() > 0:
		return exitStatus{code: exitError, msg: fmt.Sprintf("%d of %s failed in fleet run %s: each ✖ line says why and what to do next",
			c.GetFailed(), plural(int(c.GetTotal()), "host", "hosts"), runID)}
	case run.GetState() == edgev1.FleetRunState_FLEET_RUN_STATE_CANCELLED:
		return exitStatus{code: exitError, msg: fmt.Sprintf("fleet run %s was cancelled: %s not started", runID, plural(int(c.GetNotStarted()), "host was", "hosts were"))}
	}
	return nil
}

// watchFleetRun follows a run to its end, re-attaching after the last event printed
// when the stream breaks; Ctrl-C stops watching, never the run.
func (a *app) watchFleetRun(ctx context.Context, runID, out string) error {
	client, p, err := a.streamingAdminClient()
	if err != nil {
		return err
	}
	pr := newFleetPrinter(a.env.Stdout, out)
	pr.colour = out == "text" && a.useColour(a.env.Stdout)
	if err := a.followFleetRun(ctx, client, p, runID, pr); err != nil {
		return err
	}
	return pr.outcome(a, runID)
}

func (a *app) followFleetRun(ctx context.Context, client edgev1connect.EdgeAdminServiceClient, p profile, runID string, pr *fleetPrinter) error {
	broken := 0
	for {
		req := connect.NewRequest(&edgev1.WatchFleetRunRequest{RunId: runID, AfterSequence: pr.last})
		req.Header().Set("Authorization", "Bearer "+p.Token)
		stream, err := client.WatchFleetRun(ctx, req)
		if err == nil {
			for stream.Receive() {
				if broken > 0 {
					fmt.Fprintf(a.env.Stderr, "%s: re-attached to fleet run %s\n", a.name, runID)
					broken = 0
				}
				pr.event(stream.Msg().GetEvent())
				if pr.finished != nil {
					_ = stream.Close()
					return nil
				}
			}
			err = stream.Err()
			_ = stream.Close()
		}
		if ctx.Err() != nil {
			return exitStatus{code: exitExecCancelled, msg: fmt.Sprintf("stopped watching; fleet run %s goes on: re-attach with `%s edge fleet runs watch %s`, or stop it with `%s edge fleet runs cancel %s`",
				runID, a.name, runID, a.name, runID)}
		}
		if err != nil && !watchRetryable(err) {
			if connect.CodeOf(err) == connect.CodeNotFound {
				return fmt.Errorf("no such fleet run %q in your tenant: see `%s edge fleet runs list`", runID, a.name)
			}
			return a.rpcError(err, p.Server)
		}
		why := "the control plane ended the stream"
		if err != nil {
			why = a.rpcError(err, p.Server).Error()
		}
		broken++
		if broken > watchAttempts {
			return fmt.Errorf("lost the stream of fleet run %s %d times in a row (%s); the run goes on: re-attach later with `%s edge fleet runs watch %s`",
				runID, watchAttempts, why, a.name, runID)
		}
		wait := watchBackoff(broken).Round(time.Millisecond)
		fmt.Fprintf(a.env.Stderr, "%s: lost the stream of fleet run %s (%s); re-attaching after event %d in %s (attempt %d of %d)\n",
			a.name, runID, why, pr.last, shortDuration(wait), broken, watchAttempts)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// watchRetryable tells a broken stream (worth re-attaching) from a refusal.
func watchRetryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeNotFound, connect.CodePermissionDenied, connect.CodeUnauthenticated,
		connect.CodeInvalidArgument, connect.CodeUnimplemented, connect.CodeFailedPrecondition:
		return false
	}
	return !isCertError(err)
}

// watchBackoff is the wait before re-attach attempt (1-based): the shared
// full-jitter schedule, so the CLIs of many operators watching one run do not all
// come back at the same instant after a control-plane restart.
func watchBackoff(attempt int) time.Duration {
	return backoff.Policy{Min: watchBackoffBase, Max: watchBackoffMax}.Delay(attempt - 1)
}

func (a *app) fleetRunsCommand() *ucli.Command {
	return &ucli.Command{
		Name:        "runs",
		Usage:       "list, follow and cancel fleet runs",
		UsageText:   a.name + " edge fleet runs list|watch|cancel",
		Description: "Example:\n  " + a.name + " edge fleet runs list\n  " + a.name + " edge fleet runs watch fr-0123456789abcdef",
		Subcommands: []*ucli.Command{
			{
				Name:      "list",
				Usage:     "list the fleet runs of your tenant, newest first",
				UsageText: a.name + " edge fleet runs list [-o json]",
				Description: "HOSTS counts succeeded/failed/skipped/not started; a run in flight is running.\n\n" +
					"Example:\n  " + a.name + " edge fleet runs list -o json",
				Flags:  []ucli.Flag{outputFlag},
				Action: a.listFleetRuns,
			},
			{
				Name:      "watch",
				Usage:     "follow a fleet run, replaying what happened so far",
				UsageText: a.name + " edge fleet runs watch ID [-o json]",
				Description: "Prints every event of the run from its start, then follows it until it finishes, in\n" +
					"the same lines (or JSON lines) and with the same exit status as the command that started\n" +
					"it. A finished run is simply replayed. Ctrl-C stops watching, not the run.\n\n" +
					"Example:\n  " + a.name + " edge fleet runs watch fr-0123456789abcdef",
				Flags:  []ucli.Flag{outputFlag},
				Action: a.watchFleetRunCmd,
			},
			{
				Name:      "cancel",
				Usage:     "cancel a fleet run: hosts in flight finish, no further host starts",
				UsageText: a.name + " edge fleet runs cancel ID [-o json]",
				Description: "Hosts already in flight finish what they do (a rotation is never cut in half); the rest\n" +
					"are reported \"not started (cancelled)\" and the run ends cancelled.\n\n" +
					"Example:\n  " + a.name + " edge fleet runs cancel fr-0123456789abcdef",
				Flags:  []ucli.Flag{outputFlag},
				Action: a.cancelFleetRun,
			},
		},
	}
}

// fleetRunJSON is the -o json shape of a run in listings, --detach and cancel.
type fleetRunJSON struct {
	ID           string          `json:"id"`
	Action       string          `json:"action"`
	Target       string          `json:"target"`
	Mode         string          `json:"mode"`
	OnError      string          `json:"on_error"`
	Deadline     string          `json:"deadline"`
	State        string          `json:"state"`
	Counts       fleetCountsJSON `json:"counts"`
	HaltedReason string          `json:"halted_reason"`
	CreatedBy    string          `json:"created_by"`
	CreatedAt    *string         `json:"created_at"`
	FinishedAt   *string         `json:"finished_at"`
}

func toFleetRunJSON(r *edgev1.FleetRun) fleetRunJSON {
	spec := r.GetSpec()
	return fleetRunJSON{
		ID: r.GetId(), Action: fleetActionOf(spec.GetAction()).name, Target: spec.GetTarget(),
		Mode: formatFleetMode(spec), OnError: formatFleetOnError(spec), Deadline: shortDuration(spec.GetDeadline().AsDuration()),
		State: fleetRunStateName(r.GetState()), Counts: toFleetCountsJSON(r.GetCounts()), HaltedReason: r.GetHaltedReason(),
		CreatedBy: r.GetCreatedBy(), CreatedAt: timePtr(asTime(r.GetCreatedAt())), FinishedAt: timePtr(asTime(r.GetFinishedAt())),
	}
}

func (a *app) listFleetRuns(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.ListFleetRuns(ctx, connect.NewRequest(&edgev1.ListFleetRunsRequest{}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	runs := resp.Msg.GetRuns()
	return writeList(a.env.Stdout, out, "runs", runs, toFleetRunJSON, "ID\tACTION\tTARGET\tSTATE\tHOSTS\tCREATED",
		func(r *edgev1.FleetRun) []string {
			j := toFleetRunJSON(r)
			return []string{j.ID, j.Action, orDash(j.Target), j.State,
				fmt.Sprintf("%d/%d/%d/%d", j.Counts.Succeeded, j.Counts.Failed, j.Counts.Skipped, j.Counts.NotStarted), derefDash(j.CreatedAt)}
		})
}

func (a *app) watchFleetRunCmd(c *ucli.Context) error {
	id, err := oneArg(c, "ID")
	if err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	return a.watchFleetRun(c.Context, id, out)
}

func (a *app) cancelFleetRun(c *ucli.Context) error {
	id, err := oneArg(c, "ID")
	if err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.CancelFleetRun(ctx, connect.NewRequest(&edgev1.CancelFleetRunRequest{RunId: id}))
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
			return fmt.Errorf("no such fleet run %q in your tenant: see `%s edge fleet runs list`", id, a.name)
		case connect.CodePermissionDenied:
			return errors.New("your API token may not cancel fleet runs: an operator or admin token is needed")
		}
		return a.rpcError(err, p.Server)
	}
	run := resp.Msg.GetRun()
	cancelling := false
	switch run.GetState() {
	case edgev1.FleetRunState_FLEET_RUN_STATE_RUNNING, edgev1.FleetRunState_FLEET_RUN_STATE_CANCELLED:
		cancelling = true
	}
	if out == "json" {
		if err := writeJSON(a.env.Stdout, toFleetRunJSON(run)); err != nil {
			return err
		}
	} else if cancelling {
		fmt.Fprintf(a.env.Stdout, "cancelling fleet run %s: hosts in flight finish, the rest are reported \"not started (cancelled)\"\n", id)
		fmt.Fprintf(a.env.Stdout, "follow it to its end with `%s edge fleet runs watch %s`\n", a.name, id)
	}
	if cancelling {
		return nil
	}
	// The same exit status in text and JSON: a script must not read success here.
	return fmt.Errorf("fleet run %s had already finished (%s): nothing to cancel", id, fleetRunStateName(run.GetState()))
}
