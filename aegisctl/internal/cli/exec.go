package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	ucli "github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Exit statuses of `edge exec` when the remote command did not run to completion;
// chosen after coreutils `timeout`, the shell and sysexits.h so scripts can tell
// them from the command's own exit codes.
const (
	exitExecTimeout      = 124 // coreutils timeout: the deadline killed it
	exitExecDenied       = 126 // shell: found but not allowed to run
	exitExecNotFound     = 127 // shell: command not found
	exitExecCancelled    = 130 // shell: 128 + SIGINT
	exitExecDisconnected = 69  // sysexits EX_UNAVAILABLE: the host cannot be reached
	exitExecInternal     = 70  // sysexits EX_SOFTWARE: the host failed to run it
	exitExecResultLost   = 75  // sysexits EX_TEMPFAIL: the outcome is unknown; look, then retry
	// execGrace is how long past its deadline a call's result may still come (the
	// control plane's toolcall.DefaultGrace).
	execGrace = 30 * time.Second
)

// exitStatus is an error that ends the process with a specific status; an empty
// message prints nothing (the remote command's own failure speaks for itself).
type exitStatus struct {
	code int
	msg  string
}

func (e exitStatus) Error() string { return e.msg }

func (a *app) execCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "exec",
		Usage: "run a command on a host and stream its output (operator)",
		UsageText: a.name + " edge exec [--deadline 60s] [--cwd DIR] [-o json] NODE_ID -- CMD [ARGS...]\n" +
			"   " + a.name + " edge exec --attach COMMAND_ID [--deadline 60s] [-o json] NODE_ID",
		Description: "The host runs CMD with ARGS directly (no shell) if its local security policy allows it\n" +
			"in the security context the control plane assigned it (see `" + a.name + " edge hosts set`).\n" +
			"Output is printed as it comes: the command's stdout to stdout, its stderr to stderr.\n" +
			"Ctrl-C cancels the remote command (its whole process group is killed).\n\n" +
			"When the control plane restarts (or its replica dies) during the call, the command goes on on\n" +
			"the host, and exec re-attaches by its command id until the deadline plus 30s has passed: it\n" +
			"prints the output the host kept meanwhile, then the result. --attach COMMAND_ID does the same\n" +
			"by hand (the id is in the started event of -o json, and in every re-attach message).\n\n" +
			"Exit status: the remote command's own exit code when it ran; otherwise\n" +
			"  124  timeout: the deadline passed and the command was killed\n" +
			"  126  denied: the host's policy does not allow the command\n" +
			"  127  tool_not_found: the host has no such command or tool\n" +
			"  130  cancelled (Ctrl-C, or cancelled on the host)\n" +
			"   69  edge_disconnected: the host is not connected, or lost its connection\n" +
			"   70  internal: the host failed to start or follow the command\n" +
			"   75  result_lost: the host no longer has the result (edged restarted, or its result buffer\n" +
			"       overflowed): whether the command ran is unknown; look on the host before running it again\n" +
			"    1  any other error (bad token, unknown host, ...); 2 a bad command line\n\n" +
			"With -o json every event is one JSON object per line, its kind in \"type\": started, output (stream,\n" +
			"sequence, data) and result (exit_code, ok, error_kind, error_message, output_truncated,\n" +
			"duration).\n\n" +
			"Example:\n  " + a.name + " edge exec --deadline 10s n-7a3b2f0c91d4 -- /usr/bin/uptime",
		Flags: []ucli.Flag{
			&ucli.DurationFlag{Name: "deadline", Value: 60 * time.Second, Usage: "kill the command after this long"},
			&ucli.StringFlag{Name: "cwd", Usage: "working directory on the host (default: the policy's)"},
			&ucli.StringFlag{Name: "attach", Usage: "follow the earlier call `COMMAND_ID` on NODE_ID instead of starting one (its output since, then its result)"},
			outputFlag,
		},
		Action: a.exec,
	}
}

// execArgs splits NODE_ID -- CMD ARGS... (the "--" is optional when CMD does not
// start with a dash).
func execArgs(c *ucli.Context) (node string, cmd []string, err error) {
	args := c.Args().Slice()
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "--" {
		return "", nil, usagef("missing NODE_ID: %s", c.Command.UsageText)
	}
	if args[0] == "--" {
		return "", nil, usagef("NODE_ID goes before --: %s", c.Command.UsageText)
	}
	node, rest := args[0], args[1:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	} else if len(rest) > 0 && strings.HasPrefix(rest[0], "-") {
		return "", nil, usagef("flags go before NODE_ID, and the command after --: %s", c.Command.UsageText)
	}
	if len(rest) == 0 {
		return "", nil, usagef("missing the command to run: %s", c.Command.UsageText)
	}
	return node, rest, nil
}

// execEvent is the -o json shape of one Exec event.
type execEvent struct {
	Event           string `json:"type"`
	CommandID       string `json:"command_id,omitempty"`
	NodeID          string `json:"node_id,omitempty"`
	SecurityContext string `json:"security_context,omitempty"`
	Stream          string `json:"stream,omitempty"`
	Sequence        uint64 `json:"sequence,omitempty"`
	// Data is the chunk as text; bytes that are not UTF-8 become U+FFFD.
	Data            *string `json:"data,omitempty"`
	ExitCode        *int32  `json:"exit_code,omitempty"`
	OK              *bool   `json:"ok,omitempty"`
	ErrorKind       *string `json:"error_kind,omitempty"`
	ErrorMessage    *string `json:"error_message,omitempty"`
	OutputTruncated *bool   `json:"output_truncated,omitempty"`
	Duration        *string `json:"duration,omitempty"`
}

func (a *app) exec(c *ucli.Context) error {
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	deadline := c.Duration("deadline")
	if deadline <= 0 {
		return usagef("--deadline must be a positive duration (got %s)", deadline)
	}
	if id := c.String("attach"); id != "" {
		args := c.Args().Slice()
		if len(args) != 1 || strings.HasPrefix(args[0], "-") {
			return usagef("--attach takes exactly one NODE_ID and no command: %s edge exec --attach %s NODE_ID", a.name, id)
		}
		client, p, err := a.streamingAdminClient()
		if err != nil {
			return err
		}
		at := &attachment{a: a, client: client, p: p, node: args[0], id: id, end: time.Now().Add(deadline + execGrace)}
		if out == "json" {
			at.jsonOut = json.NewEncoder(a.env.Stdout)
		}
		result, err := at.follow(c.Context, nil)
		if err != nil {
			return err
		}
		return a.finishExec(result, at.node, "", deadline, at.jsonOut != nil)
	}
	node, cmd, err := execArgs(c)
	if err != nil {
		return err
	}
	client, p, err := a.streamingAdminClient()
	if err != nil {
		return err
	}
	startedAt := time.Now()
	req := connect.NewRequest(&edgev1.ExecRequest{
		NodeId: node, Command: cmd[0], Args: cmd[1:], Cwd: c.String("cwd"), Deadline: durationpb.New(deadline),
	})
	req.Header().Set("Authorization", "Bearer "+p.Token)
	// c.Context ends on SIGINT/SIGTERM: closing the call is what cancels the
	// remote command, so no extra signal handling is needed here.
	ctx := c.Context
	stream, err := client.Exec(ctx, req)
	if err != nil {
		return a.execRPCError(ctx, err, node, p.Server)
	}
	defer stream.Close()

	var jsonOut *json.Encoder
	if out == "json" {
		jsonOut = json.NewEncoder(a.env.Stdout)
	}
	var result *edgev1.CommandResult
	var sctx, commandID string
	var lastSeq uint64
	for stream.Receive() {
		msg := stream.Msg()
		switch ev := msg.GetEvent().(type) {
		case *edgev1.ExecResponse_Started:
			sctx, commandID = ev.Started.GetSecurityContext(), ev.Started.GetCommandId()
			if jsonOut != nil {
				_ = jsonOut.Encode(execEvent{Event: "started", CommandID: ev.Started.GetCommandId(), NodeID: ev.Started.GetNodeId(), SecurityContext: sctx})
			}
		case *edgev1.ExecResponse_Output:
			o := ev.Output
			lastSeq = max(lastSeq, o.GetSequence())
			if jsonOut != nil {
				data := string(o.GetData())
				_ = jsonOut.Encode(execEvent{Event: "output", Stream: streamName(o.GetStream()), Sequence: o.GetSequence(), Data: &data})
				continue
			}
			w := a.env.Stdout
			if o.GetStream() == edgev1.OutputStream_OUTPUT_STREAM_STDERR {
				w = a.env.Stderr
			}
			_, _ = w.Write(o.GetData())
		case *edgev1.ExecResponse_Result:
			result = ev.Result
			if jsonOut != nil {
				_ = jsonOut.Encode(resultEvent(result))
			}
		}
	}
	streamErr := stream.Err()
	if result == nil && commandID != "" && ctx.Err() == nil {
		// Started, then the stream ended without a result: the control plane stopped
		// or its replica died. The command goes on on the host; follow it again.
		at := &attachment{a: a, client: client, p: p, node: node, id: commandID, jsonOut: jsonOut,
			lastSeq: lastSeq, end: startedAt.Add(deadline + execGrace)}
		if result, err = at.follow(ctx, streamErr); err != nil {
			return err
		}
		return a.finishExec(result, node, sctx, deadline, jsonOut != nil)
	}
	if streamErr != nil {
		return a.execRPCError(ctx, streamErr, node, p.Server)
	}
	if result == nil {
		return fmt.Errorf("the control plane at %s ended the call without a result: run it again", p.Server)
	}
	return a.finishExec(result, node, sctx, deadline, jsonOut != nil)
}

func (a *app) finishExec(result *edgev1.CommandResult, node, sctx string, deadline time.Duration, json bool) error {
	if result.GetOutputTruncated() && !json {
		fmt.Fprintf(a.env.Stderr, "%s: the output was cut at the host's cap (tools.max_output_bytes in its edged config)\n", a.name)
	}
	return a.execOutcome(result, node, sctx, deadline)
}

// attachment follows a call by its command id (AttachExec) until its result, trying
// again while the control plane is unreachable or the host not yet back, until end.
type attachment struct {
	a       *app
	client  edgev1connect.EdgeAdminServiceClient
	p       profile
	node    string
	id      string
	jsonOut *json.Encoder
	lastSeq uint64
	end     time.Time
}

func (at *attachment) follow(ctx context.Context, why error) (*edgev1.CommandResult, error) {
	a := at.a
	lastReason := ""
	for attempt := 1; ; attempt++ {
		if why != nil || attempt > 1 {
			reason := "the host is not back yet"
			if why != nil {
				reason = orDefault(connectMessage(why), why.Error())
			}
			// One line per new reason, and one every ten attempts: a restart that
			// takes a minute says so without a line a second.
			if reason != lastReason || attempt%10 == 0 {
				fmt.Fprintf(a.env.Stderr, "%s: lost the call %s on %s (%s); re-attaching (attempt %d)\n", a.name, at.id, at.node, reason, attempt)
				lastReason = reason
			}
			select {
			case <-ctx.Done():
				return nil, exitStatus{code: exitExecCancelled, msg: fmt.Sprintf("stopped following command %s on %s; it goes on there: attach again with `%s edge exec --attach %s %s`", at.id, at.node, a.name, at.id, at.node)}
			case <-time.After(time.Second):
			}
		}
		if time.Now().After(at.end) {
			return nil, exitStatus{code: exitExecDisconnected, msg: fmt.Sprintf("could not re-attach to command %s on %s before its deadline passed: attach again with `%s edge exec --attach %s %s` once the control plane and the host are back", at.id, at.node, a.name, at.id, at.node)}
		}
		req := connect.NewRequest(&edgev1.AttachExecRequest{NodeId: at.node, CommandId: at.id, Wait: durationpb.New(time.Until(at.end))})
		req.Header().Set("Authorization", "Bearer "+at.p.Token)
		stream, err := at.client.AttachExec(ctx, req)
		if err != nil {
			why = err
			continue
		}
		var result *edgev1.CommandResult
		for stream.Receive() {
			switch ev := stream.Msg().GetEvent().(type) {
			case *edgev1.AttachExecResponse_Output:
				o := ev.Output
				if o.GetSequence() <= at.lastSeq {
					continue // printed before the stream was lost
				}
				at.lastSeq = o.GetSequence()
				if at.jsonOut != nil {
					data := string(o.GetData())
					_ = at.jsonOut.Encode(execEvent{Event: "output", Stream: streamName(o.GetStream()), Sequence: o.GetSequence(), Data: &data})
					continue
				}
				w := a.env.Stdout
				if o.GetStream() == edgev1.OutputStream_OUTPUT_STREAM_STDERR {
					w = a.env.Stderr
				}
				_, _ = w.Write(o.GetData())
			case *edgev1.AttachExecResponse_Result:
				result = ev.Result
			}
		}
		err = stream.Err()
		_ = stream.Close()
		if ctx.Err() != nil {
			return nil, exitStatus{code: exitExecCancelled, msg: fmt.Sprintf("stopped following command %s on %s; it goes on there: attach again with `%s edge exec --attach %s %s`", at.id, at.node, a.name, at.id, at.node)}
		}
		if result != nil {
			if result.GetErrorKind() == edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED && time.Now().Before(at.end) {
				why = nil
				continue
			}
			fmt.Fprintf(a.env.Stderr, "%s: re-attached to command %s on %s\n", a.name, at.id, at.node)
			if at.jsonOut != nil {
				_ = at.jsonOut.Encode(resultEvent(result))
			}
			return result, nil
		}
		switch connect.CodeOf(err) {
		case connect.CodeNotFound, connect.CodePermissionDenied, connect.CodeInvalidArgument, connect.CodeUnauthenticated, connect.CodeFailedPrecondition:
			return nil, a.execRPCError(ctx, err, at.node, at.p.Server)
		}
		why = err
		if why == nil {
			why = errors.New("the control plane ended the call without a result")
		}
	}
}

// streamingAdminClient is adminClient without the whole-request timeout, which would
// cut a long command's stream; the call's end is the command's deadline.
func (a *app) streamingAdminClient() (edgev1connect.EdgeAdminServiceClient, profile, error) {
	p, err := a.loadProfile()
	if err != nil {
		return nil, p, err
	}
	server, err := normalizeServer(p.Server)
	if err != nil {
		return nil, p, fmt.Errorf("the profile's server %q is not a URL: log in again", p.Server)
	}
	p.Server = server
	hc, err := httpClient([]byte(p.CAPEM))
	if err != nil {
		return nil, p, fmt.Errorf("the profile's CA: %w: log in again with the right --ca-file", err)
	}
	hc.Timeout = 0
	return edgev1connect.NewEdgeAdminServiceClient(hc, server), p, nil
}

func (a *app) execRPCError(ctx context.Context, err error, node, server string) error {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return exitStatus{code: exitExecCancelled, msg: "cancelled: the remote command on " + node + " was told to stop"}
	}
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		return fmt.Errorf("no such host %q in your tenant: see `%s edge hosts list`", node, a.name)
	case connect.CodePermissionDenied:
		return errors.New("your API token may not run commands on hosts: an operator or admin token is needed")
	case connect.CodeInvalidArgument:
		return usagef("%s: run `%s edge exec --help`", orDefault(connectMessage(err), "invalid request"), a.name)
	}
	return a.rpcError(err, server)
}

// execOutcome turns the result into the process's exit: the remote exit code, or a
// distinct status and one line naming what happened and what to do.
func (a *app) execOutcome(r *edgev1.CommandResult, node, sctx string, deadline time.Duration) error {
	msg := r.GetErrorMessage()
	detail := func(s string) string {
		if msg == "" {
			return s
		}
		return s + " (" + msg + ")"
	}
	switch r.GetErrorKind() {
	case edgev1.ToolErrorKind_TOOL_ERROR_KIND_UNSPECIFIED:
		code := int(r.GetExitCode())
		switch {
		case r.GetOk() && code == 0:
			return nil
		case code > 0 && code < 256:
			return exitStatus{code: code}
		default:
			return exitStatus{code: exitError, msg: detail(fmt.Sprintf("the command on %s failed with exit code %d", node, code))}
		}
	case edgev1.ToolErrorKind_TOOL_ERROR_KIND_TIMEOUT:
		return exitStatus{code: exitExecTimeout, msg: detail(fmt.Sprintf("timeout: the command ran past its %s deadline on %s and was killed", deadline, node)) + ": give it more time with --deadline"}
	case edgev1.ToolErrorKind_TOOL_ERROR_KIND_CANCELLED:
		return exitStatus{code: exitExecCancelled, msg: detail("cancelled: the command on " + node + " was stopped before it finished")}
	case edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED:
		return exitStatus{code: exitExecDenied, msg: detail(fmt.Sprintf("denied: the local policy of %s does not allow this command in security context %q", node, sctx)) +
			fmt.Sprintf(": allow it in the host's edged config, or move the host with `%s edge hosts set %s --security-context NAME`", a.name, node)}
	case edgev1.ToolErrorKind_TOOL_ERROR_KIND_TOOL_NOT_FOUND:
		return exitStatus{code: exitExecNotFound, msg: detail("tool_not_found: "+node+" has no such command") + ": give the command's absolute path"}
	case edgev1.ToolErrorKind_TOOL_ERROR_KIND_RESULT_LOST:
		return exitStatus{code: exitExecResultLost, msg: detail(fmt.Sprintf("result_lost: the result of command %s on %s is lost", r.GetCommandId(), node)) +
			": whether it ran, and how it ended, is unknown; look on the host (edged's log names the command id) before running it again"}
	case edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED:
		return exitStatus{code: exitExecDisconnected, msg: detail("edge_disconnected: "+node+" is not connected to the control plane") +
			fmt.Sprintf(": check that edged runs there (`%s edge hosts get %s` shows its status)", a.name, node)}
	default:
		return exitStatus{code: exitExecInternal, msg: detail("internal: "+node+" failed to run the command") + ": see edged's log on the host"}
	}
}

func streamName(s edgev1.OutputStream) string {
	if s == edgev1.OutputStream_OUTPUT_STREAM_STDERR {
		return "stderr"
	}
	return "stdout"
}

// errorKindName is the kind as the contract and metrics spell it ("" for none).
func errorKindName(k edgev1.ToolErrorKind) string {
	if k == edgev1.ToolErrorKind_TOOL_ERROR_KIND_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(k.String(), "TOOL_ERROR_KIND_"))
}

func resultEvent(r *edgev1.CommandResult) execEvent {
	code, ok, kind, trunc := r.GetExitCode(), r.GetOk(), errorKindName(r.GetErrorKind()), r.GetOutputTruncated()
	msg, dur := r.GetErrorMessage(), jsonDuration(r.GetDuration().AsDuration())
	// A result event has every result field, empty or not: "" for no error.
	ev := execEvent{Event: "result", CommandID: r.GetCommandId(), ExitCode: &code, OK: &ok, ErrorKind: &kind,
		ErrorMessage: &msg, OutputTruncated: &trunc, Duration: &dur}
	return ev
}
