package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

// attachRun is one AttachExec in flight.
type attachRun struct {
	events chan *edgev1.AttachExecResponse
	done   chan struct{}
	err    error
}

func startAttach(t *testing.T, c edgev1connect.EdgeAdminServiceClient, nodeID, commandID string) *attachRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	r := &attachRun{events: make(chan *edgev1.AttachExecResponse, 64), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer close(r.events)
		s, err := c.AttachExec(ctx, connect.NewRequest(&edgev1.AttachExecRequest{NodeId: nodeID, CommandId: commandID}))
		if err != nil {
			r.err = err
			return
		}
		defer s.Close()
		for s.Receive() {
			r.events <- s.Msg()
		}
		r.err = s.Err()
	}()
	return r
}

// all waits for the attach to end and returns its events and error.
func (r *attachRun) all(t *testing.T) ([]*edgev1.AttachExecResponse, error) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		t.Fatal("AttachExec did not end within 15s")
	}
	var out []*edgev1.AttachExecResponse
	for ev := range r.events {
		out = append(out, ev)
	}
	return out, r.err
}

// execAcrossRestart starts an Exec, has the daemon send one chunk, restarts the
// control plane (the Exec ends Unavailable, no result), and reconnects the daemon.
func execAcrossRestart(t *testing.T, srv *cptest.Server) (*node, *stream, string) {
	t.Helper()
	n, st := connected(t, srv)
	r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/sh", Args: []string{"-c", "slow"}})
	r.next(t)
	id := st.expectInvoke().GetCommandId()
	st.progress(id, 1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "one\n")
	if out := r.next(t).GetOutput(); string(out.GetData()) != "one\n" {
		t.Fatalf("output = %v", out)
	}
	srv.Restart(t)
	if err := r.end(t); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("Exec across the restart ended with %v, want Unavailable", err)
	}
	st2 := n.open(t, time.Now)
	st2.hello()
	return n, st2, id
}

// After a restart the daemon sends what it kept (output produced while no stream was
// up, then the result) before anyone re-attached: AttachExec replays it, in order,
// and the call is audited as attached.
func TestAttachExecReplaysWhatArrivedBeforeIt(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n, st, id := execAcrossRestart(t, srv)
		st.progress(id, 2, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "two\n")
		st.progress(id, 3, edgev1.OutputStream_OUTPUT_STREAM_STDERR, "three\n")
		st.result(&edgev1.CommandResult{CommandId: id, ExitCode: 4, LastSequence: 3})

		evs, err := startAttach(t, srv.AdminClient(), n.id, id).all(t)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 3 || string(evs[0].GetOutput().GetData()) != "two\n" || string(evs[1].GetOutput().GetData()) != "three\n" ||
			evs[1].GetOutput().GetStream() != edgev1.OutputStream_OUTPUT_STREAM_STDERR || evs[2].GetResult().GetExitCode() != 4 {
			t.Fatalf("attach events = %v", evs)
		}
		found := false
		for _, a := range execAudits(t, srv, n.id) {
			if a.Details["attached"] == "true" && a.Details["command_id"] == id && a.Details["exit_code"] == "4" {
				found = true
			}
		}
		if !found {
			t.Errorf("no attached exec audit entry for %s: %+v", id, execAudits(t, srv, n.id))
		}
	})
}

// Attached while the call still runs: the host is asked (QueryTool), and its later
// output and result reach the attach; a host that does not know the id answers
// RESULT_LOST, which the attach reports at once.
func TestAttachExecAsksTheHost(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n, st, id := execAcrossRestart(t, srv)
	r := startAttach(t, srv.AdminClient(), n.id, id)
	if q := st.expectCommand().GetQueryTool(); q.GetCommandId() != id {
		t.Fatalf("expected QueryTool{%s}", id)
	}
	st.progress(id, 2, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "two\n")
	st.result(&edgev1.CommandResult{CommandId: id, Ok: true, LastSequence: 2})
	evs, err := r.all(t)
	if err != nil || len(evs) != 2 || string(evs[0].GetOutput().GetData()) != "two\n" || !evs[1].GetResult().GetOk() {
		t.Fatalf("attach = %v, %v", evs, err)
	}

	lost := "c-" + strings.Repeat("0f", 16)
	r = startAttach(t, srv.AdminClient(), n.id, lost)
	if q := st.expectCommand().GetQueryTool(); q.GetCommandId() != lost {
		t.Fatalf("expected QueryTool{%s}", lost)
	}
	st.result(&edgev1.CommandResult{CommandId: lost, ExitCode: -1, ErrorKind: edgev1.ToolErrorKind_TOOL_ERROR_KIND_RESULT_LOST, ErrorMessage: "not known here"})
	evs, err = r.all(t)
	if err != nil || len(evs) != 1 || evs[0].GetResult().GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_RESULT_LOST {
		t.Fatalf("attach to a lost call = %v, %v", evs, err)
	}
}

// Attacks on a re-attach: another node reporting a result for this node's command id
// (kept under its own node, never replayed to this one's attach), an attach to a
// malformed id, and a second attach while one follows the call.
func TestAttachExecRefusals(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n, st, id := execAcrossRestart(t, srv)
	_, other := connected(t, srv)
	other.progress(id, 2, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "forged\n")
	other.result(&edgev1.CommandResult{CommandId: id, Ok: true})

	r := startAttach(t, srv.AdminClient(), n.id, id)
	if q := st.expectCommand().GetQueryTool(); q.GetCommandId() != id {
		t.Fatalf("expected QueryTool{%s} on the real node's stream", id)
	}
	second, err := startAttach(t, srv.AdminClient(), n.id, id).all(t)
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || len(second) != 0 {
		t.Fatalf("a second attach = %v, %v; want FailedPrecondition", second, err)
	}
	st.result(&edgev1.CommandResult{CommandId: id, ExitCode: 2})
	evs, err := r.all(t)
	if err != nil || len(evs) != 1 || evs[0].GetResult().GetExitCode() != 2 {
		t.Fatalf("attach = %v, %v; want only the real node's result", evs, err)
	}

	_, err = startAttach(t, srv.AdminClient(), n.id, "c-nothex").all(t)
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("attach to a malformed id: %v, want InvalidArgument", err)
	}
}

// A daemon reporting output for made-up command ids (far more than the control plane
// keeps for attaches in all) cannot push out what another host's call left: each
// node's share is bounded.
func TestAttachExecKeptOutputCannotBeFloodedAway(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n, st, id := execAcrossRestart(t, srv)
	st.result(&edgev1.CommandResult{CommandId: id, ExitCode: 5})

	_, flood := connected(t, srv)
	chunk := strings.Repeat("x", 900<<10)
	for i := range 20 { // 18 MB, over the 16 MiB kept in all
		flood.progress(fmt.Sprintf("c-%032x", i+1), 1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, chunk)
	}
	flood.heartbeat() // every chunk above was read

	evs, err := startAttach(t, srv.AdminClient(), n.id, id).all(t)
	if err != nil || len(evs) != 1 || evs[0].GetResult().GetExitCode() != 5 {
		t.Fatalf("attach after the flood = %v, %v; want the kept result", evs, err)
	}
}
