package rpc

import (
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Tool calls between protobuf and the toolcall domain, both directions.

var kindToPB = map[toolcall.ErrorKind]edgev1.ToolErrorKind{
	toolcall.KindNone:             edgev1.ToolErrorKind_TOOL_ERROR_KIND_UNSPECIFIED,
	toolcall.KindTimeout:          edgev1.ToolErrorKind_TOOL_ERROR_KIND_TIMEOUT,
	toolcall.KindCancelled:        edgev1.ToolErrorKind_TOOL_ERROR_KIND_CANCELLED,
	toolcall.KindDenied:           edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED,
	toolcall.KindToolNotFound:     edgev1.ToolErrorKind_TOOL_ERROR_KIND_TOOL_NOT_FOUND,
	toolcall.KindInternal:         edgev1.ToolErrorKind_TOOL_ERROR_KIND_INTERNAL,
	toolcall.KindEdgeDisconnected: edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED,
	toolcall.KindResultLost:       edgev1.ToolErrorKind_TOOL_ERROR_KIND_RESULT_LOST,
	// KindShutdown never reaches a daemon or an operator as a result: Exec and
	// AttachExec end with Unavailable instead, so the caller attaches again.
}

func kindFromPB(k edgev1.ToolErrorKind) toolcall.ErrorKind {
	for d, p := range kindToPB {
		if p == k {
			return d
		}
	}
	// A kind this server does not know yet still means the call did not complete.
	return toolcall.KindInternal
}

func resultPB(commandID string, r toolcall.Result) *edgev1.CommandResult {
	out := &edgev1.CommandResult{
		CommandId:       commandID,
		ExitCode:        r.ExitCode,
		Ok:              r.OK,
		ErrorKind:       kindToPB[r.Kind],
		ErrorMessage:    r.Message,
		OutputTruncated: r.OutputTruncated,
		LastSequence:    r.LastSequence,
	}
	if r.Duration > 0 {
		out.Duration = durationpb.New(r.Duration)
	}
	return out
}

func resultFromPB(m *edgev1.CommandResult) toolcall.Result {
	r := toolcall.Result{
		ExitCode:        m.GetExitCode(),
		OK:              m.GetOk(),
		Kind:            kindFromPB(m.GetErrorKind()),
		Message:         m.GetErrorMessage(),
		OutputTruncated: m.GetOutputTruncated(),
		LastSequence:    m.GetLastSequence(),
	}
	if m.GetDuration() != nil {
		r.Duration = m.GetDuration().AsDuration()
	}
	// ok means the process ran and exited 0; a daemon saying otherwise is not
	// believed, so a failure is never counted or shown as a success.
	if r.Kind != toolcall.KindNone || r.ExitCode != 0 {
		r.OK = false
	}
	return r
}

func progressPB(commandID string, p toolcall.Progress) *edgev1.CommandProgress {
	stream := edgev1.OutputStream_OUTPUT_STREAM_STDOUT
	if p.Stream == toolcall.Stderr {
		stream = edgev1.OutputStream_OUTPUT_STREAM_STDERR
	}
	return &edgev1.CommandProgress{CommandId: commandID, Sequence: p.Sequence, Stream: stream, Data: p.Data}
}

func progressFromPB(m *edgev1.CommandProgress) toolcall.Progress {
	stream := toolcall.Stdout
	if m.GetStream() == edgev1.OutputStream_OUTPUT_STREAM_STDERR {
		stream = toolcall.Stderr
	}
	return toolcall.Progress{Sequence: m.GetSequence(), Stream: stream, Data: m.GetData()}
}

func invokeToolPB(c session.Command) *edgev1.EdgeCommand {
	inv := c.Invoke
	return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_InvokeTool{InvokeTool: &edgev1.InvokeTool{
		CommandId: c.CommandID,
		Tool:      inv.Tool,
		CmdRun: &edgev1.CmdRunArgs{
			Command: inv.Command,
			Args:    inv.Args,
			Cwd:     inv.Cwd,
			Env:     inv.Env,
		},
		Deadline:        timestamppb.New(inv.Deadline),
		SecurityContext: inv.SecurityContext,
	}}}
}
