package rpc_test

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// aegis edge exec through A runs on a host connected to B: the invocation crosses
// to B, output streams back in order (a chunk larger than one notification
// included), and the result ends the Exec on A with its audit entry.
func TestReplicasExecAcrossReplicas(t *testing.T) {
	rs := threeReplicas(t)
	a, b := rs[0], rs[1]
	n, st := onReplica(t, a, b)

	r := startExec(t, a.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/echo", Args: []string{"hi"}, Deadline: durationpb.New(30 * time.Second)})
	started := r.next(t).GetStarted()
	inv := st.expectInvoke()
	if inv.GetCommandId() != started.GetCommandId() || inv.GetCmdRun().GetCommand() != "/bin/echo" || strings.Join(inv.GetCmdRun().GetArgs(), " ") != "hi" {
		t.Fatalf("InvokeTool on B = %v, started on A = %v", inv, started)
	}
	id := inv.GetCommandId()
	big := strings.Repeat("0123456789abcdef", 2048) // 32 KiB, edged's largest chunk
	st.progress(id, 1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "hi\n")
	st.progress(id, 2, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, big)
	st.progress(id, 3, edgev1.OutputStream_OUTPUT_STREAM_STDERR, "done\n")
	st.result(&edgev1.CommandResult{CommandId: id, Ok: true, LastSequence: 3})

	for i, want := range []string{"hi\n", big, "done\n"} {
		out := r.next(t).GetOutput()
		if out.GetSequence() != uint64(i+1) || string(out.GetData()) != want {
			t.Fatalf("output %d on A = seq %d, %d bytes; want seq %d, %d bytes", i, out.GetSequence(), len(out.GetData()), i+1, len(want))
		}
	}
	if res := r.next(t).GetResult(); !res.GetOk() || res.GetCommandId() != id {
		t.Fatalf("result on A = %v", res)
	}
	if err := r.end(t); err != nil {
		t.Fatalf("Exec on A ended with %v", err)
	}
	if au := execAudits(t, a, n.id); len(au) != 1 || au[0].Result != "ok" {
		t.Fatalf("exec audit entries = %+v, want one ok", au)
	}
}

// Cancelling an Exec made through A stops the call on the host connected to C, and
// the host's cancelled result is recorded by A.
func TestReplicasExecCancelAcrossReplicas(t *testing.T) {
	rs := threeReplicas(t)
	a, c := rs[0], rs[2]
	n, st := onReplica(t, a, c)

	r := startExec(t, a.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/sleep", Args: []string{"60"}})
	r.next(t)
	id := st.expectInvoke().GetCommandId()
	r.cancel()
	if err := r.end(t); connect.CodeOf(err) != connect.CodeCanceled {
		t.Fatalf("cancelled Exec ended with %v", err)
	}
	if cmd := st.expectCommand(); cmd.GetCancelTool().GetCommandId() != id {
		t.Fatalf("expected CancelTool{%s} on C, got %v", id, cmd)
	}
	st.result(&edgev1.CommandResult{CommandId: id, ExitCode: -1, ErrorKind: edgev1.ToolErrorKind_TOOL_ERROR_KIND_CANCELLED, ErrorMessage: "cancelled"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if au := execAudits(t, a, n.id); len(au) == 1 && au[0].Result == "cancelled" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("exec audit entries = %+v, want one cancelled", execAudits(t, a, n.id))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The replica an Exec went through stops mid-call (the Exec ends Unavailable): an
// attach through a third replica asks the host (QueryTool crosses to the replica
// holding its stream) and receives the output and result the host sends there.
func TestReplicasAttachExecAfterTheReplicaStops(t *testing.T) {
	rs := threeReplicas(t)
	a, b, c := rs[0], rs[1], rs[2]
	n, st := onReplica(t, a, b)

	r := startExec(t, a.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/sleep", Args: []string{"5"}, Deadline: durationpb.New(30 * time.Second)})
	r.next(t)
	id := st.expectInvoke().GetCommandId()
	st.progress(id, 1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "one\n")
	if out := r.next(t).GetOutput(); string(out.GetData()) != "one\n" {
		t.Fatalf("output on A = %v", out)
	}
	a.Stop()
	if err := r.end(t); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("Exec on the stopped replica ended with %v, want Unavailable", err)
	}

	at := startAttach(t, c.AdminClient(), n.id, id)
	if q := st.expectCommand().GetQueryTool(); q.GetCommandId() != id {
		t.Fatalf("expected QueryTool{%s} on B", id)
	}
	st.progress(id, 2, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "two\n")
	st.result(&edgev1.CommandResult{CommandId: id, Ok: true, LastSequence: 2})
	// C heard the first chunk too (B forwards what no local call waits for), so the
	// attach may replay it: the CLI skips sequences it printed.
	evs, err := at.all(t)
	if err != nil || len(evs) < 2 || !evs[len(evs)-1].GetResult().GetOk() {
		t.Fatalf("attach through C = %v, %v", evs, err)
	}
	var out strings.Builder
	var seq uint64
	for _, ev := range evs[:len(evs)-1] {
		if o := ev.GetOutput(); o == nil || o.GetSequence() <= seq {
			t.Fatalf("attach events out of order: %v", evs)
		} else {
			seq = o.GetSequence()
			out.Write(o.GetData())
		}
	}
	if got := out.String(); got != "two\n" && got != "one\ntwo\n" {
		t.Fatalf("attach output %q", got)
	}
}
