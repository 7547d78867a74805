package rpc_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"google.golang.org/protobuf/types/known/durationpb"
)

// execRun is one Exec call in flight: its events arrive on events, and err is set
// once the server stream has ended.
type execRun struct {
	events chan *edgev1.ExecResponse
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

func startExec(t *testing.T, c edgev1connect.EdgeAdminServiceClient, req *edgev1.ExecRequest) *execRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	r := &execRun{events: make(chan *edgev1.ExecResponse, 64), done: make(chan struct{}), cancel: cancel}
	t.Cleanup(cancel)
	go func() {
		defer close(r.done)
		defer close(r.events)
		s, err := c.Exec(ctx, connect.NewRequest(req))
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

// next is the next event of the Exec (fails the test if it ended or is silent).
func (r *execRun) next(t *testing.T) *edgev1.ExecResponse {
	t.Helper()
	select {
	case ev, ok := <-r.events:
		if !ok {
			t.Fatalf("Exec ended early: %v", r.err)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no Exec event within 10s")
	}
	return nil
}

// end waits for the Exec to end after its result and returns the RPC's error.
func (r *execRun) end(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Exec did not end within 10s")
	}
	for ev := range r.events {
		t.Errorf("event after the result: %v", ev)
	}
	return r.err
}

// quiet checks that nothing arrives on the Exec for a moment.
func (r *execRun) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev, ok := <-r.events:
		if ok {
			t.Fatalf("unexpected Exec event %v", ev)
		}
		t.Fatalf("Exec ended early: %v", r.err)
	case <-time.After(d):
	}
}

// connected enrolls a node and opens its stream (Hello answered).
func connected(t *testing.T, srv *cptest.Server) (*node, *stream) {
	t.Helper()
	n := enroll(t, srv, srv.EnrollmentToken(t))
	st := n.open(t, time.Now)
	st.hello()
	return n, st
}

// expectCommand reads the stream's next command, skipping heartbeat acks.
func (s *stream) expectCommand() *edgev1.EdgeCommand {
	s.t.Helper()
	for {
		cmd, err := s.recv()
		if err != nil {
			s.t.Fatalf("expected a command, the stream ended: %v", err)
		}
		if cmd.GetHeartbeatAck() == nil {
			return cmd
		}
	}
}

func (s *stream) expectInvoke() *edgev1.InvokeTool {
	s.t.Helper()
	cmd := s.expectCommand()
	if cmd.GetInvokeTool() == nil {
		s.t.Fatalf("expected InvokeTool, got %v", cmd)
	}
	return cmd.GetInvokeTool()
}

func (s *stream) progress(id string, seq uint64, out edgev1.OutputStream, data string) {
	s.t.Helper()
	s.send(s.envelope(&edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_CommandProgress{CommandProgress: &edgev1.CommandProgress{
		CommandId: id, Sequence: seq, Stream: out, Data: []byte(data),
	}}}, nil))
}

// result sends r and expects the server's ack for it.
func (s *stream) result(r *edgev1.CommandResult) {
	s.t.Helper()
	s.send(s.envelope(&edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_CommandResult{CommandResult: r}}, nil))
	cmd := s.expectCommand()
	if cmd.GetCommandResultAck().GetCommandId() != r.GetCommandId() {
		s.t.Fatalf("expected CommandResultAck{%s}, got %v", r.GetCommandId(), cmd)
	}
}

// hangUp ends the stream from the daemon's side, as a lost connection would.
func (s *stream) hangUp() {
	_ = s.bs.CloseRequest()
	s.cancel()
}

func execAudits(t *testing.T, srv *cptest.Server, nodeID string) []store.AuditEntry {
	t.Helper()
	all, err := srv.Store.ListAudit(context.Background(), "", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.AuditEntry
	for _, e := range all {
		if e.Action == "exec" && e.NodeID == nodeID {
			out = append(out, e)
		}
	}
	return out
}

func metricsText(t *testing.T, srv *cptest.Server) string {
	t.Helper()
	resp, err := srv.HTTPClient().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantMetric(t *testing.T, text, line string) {
	t.Helper()
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + `$`).MatchString(text) {
		t.Errorf("metrics lack %q", line)
	}
}

var commandID = regexp.MustCompile(`^c-[0-9a-f]{32}$`)

// A host with no live stream answers with a result of kind EDGE_DISCONNECTED (not
// an RPC error), so the operator's CLI reports it like any other outcome.
func TestExecHostWithoutStream(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/echo", Args: []string{"hi"}})
		started := r.next(t).GetStarted()
		if !commandID.MatchString(started.GetCommandId()) || started.GetNodeId() != n.id {
			t.Fatalf("started = %v", started)
		}
		res := r.next(t).GetResult()
		if res.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED || res.GetOk() {
			t.Fatalf("result = %v, want EDGE_DISCONNECTED", res)
		}
		if !strings.Contains(res.GetErrorMessage(), "no live stream") {
			t.Errorf("error message %q does not say why", res.GetErrorMessage())
		}
		if err := r.end(t); err != nil {
			t.Fatalf("Exec ended with %v", err)
		}
		if a := execAudits(t, srv, n.id); len(a) != 1 || a[0].Result != "edge_disconnected" {
			t.Fatalf("exec audit entries = %+v", a)
		}
	})
}

// The whole path: InvokeTool carries the host's security context and the deadline;
// the daemon's output reaches the caller in order, the result ends the Exec, the
// daemon gets its ack; the call is audited without its output and counted.
func TestExecRoundTrip(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		n, st := connected(t, srv)
		if err := srv.Store.SetDaemonSecurityContext(ctx, n.id, "ops"); err != nil {
			t.Fatal(err)
		}

		before := time.Now()
		r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/echo", Args: []string{"secret-ish", "x"},
			Cwd: "/tmp", Deadline: durationpb.New(45 * time.Second)})
		started := r.next(t).GetStarted()
		if started.GetSecurityContext() != "ops" {
			t.Errorf("started.security_context = %q, want ops", started.GetSecurityContext())
		}
		inv := st.expectInvoke()
		if inv.GetCommandId() != started.GetCommandId() || inv.GetTool() != "cmd.run" {
			t.Fatalf("InvokeTool = %v, started = %v", inv, started)
		}
		if inv.GetSecurityContext() != "ops" {
			t.Errorf("InvokeTool.security_context = %q, want ops", inv.GetSecurityContext())
		}
		a := inv.GetCmdRun()
		if a.GetCommand() != "/bin/echo" || strings.Join(a.GetArgs(), " ") != "secret-ish x" || a.GetCwd() != "/tmp" {
			t.Errorf("cmd_run = %v", a)
		}
		if dl := inv.GetDeadline().AsTime(); dl.Before(before.Add(44*time.Second)) || dl.After(time.Now().Add(46*time.Second)) {
			t.Errorf("deadline %s is not now+45s", dl)
		}

		id := inv.GetCommandId()
		st.progress(id, 1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "secret-ish ")
		st.progress(id, 2, edgev1.OutputStream_OUTPUT_STREAM_STDERR, "warning\n")
		st.progress(id, 3, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "x\n")
		st.progress(id, 2, edgev1.OutputStream_OUTPUT_STREAM_STDERR, "a repeat is dropped\n")
		st.result(&edgev1.CommandResult{CommandId: id, Ok: true, LastSequence: 3, Duration: durationpb.New(20 * time.Millisecond)})

		want := []struct {
			seq    uint64
			stream edgev1.OutputStream
			data   string
		}{
			{1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "secret-ish "},
			{2, edgev1.OutputStream_OUTPUT_STREAM_STDERR, "warning\n"},
			{3, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "x\n"},
		}
		for _, w := range want {
			out := r.next(t).GetOutput()
			if out.GetSequence() != w.seq || out.GetStream() != w.stream || string(out.GetData()) != w.data || out.GetCommandId() != id {
				t.Fatalf("output = %v, want %v", out, w)
			}
		}
		res := r.next(t).GetResult()
		if !res.GetOk() || res.GetExitCode() != 0 || res.GetLastSequence() != 3 || res.GetCommandId() != id {
			t.Fatalf("result = %v", res)
		}
		if err := r.end(t); err != nil {
			t.Fatalf("Exec ended with %v", err)
		}

		audits := execAudits(t, srv, n.id)
		if len(audits) != 1 {
			t.Fatalf("exec audit entries = %+v, want 1", audits)
		}
		e := audits[0]
		if e.Result != "ok" || e.Details["command"] != "/bin/echo" || e.Details["command_id"] != id || !strings.HasPrefix(e.Actor, "op:") {
			t.Errorf("audit entry = %+v", e)
		}
		for k, v := range e.Details {
			if strings.Contains(v, "secret-ish") || strings.Contains(v, "warning") {
				t.Errorf("audit detail %s=%q holds the command's arguments or output", k, v)
			}
		}
		m := metricsText(t, srv)
		wantMetric(t, m, `aegis_edge_tool_calls_total{result="ok",tool="cmd.run"} 1`)
		wantMetric(t, m, `aegis_edge_tool_call_duration_seconds_count{tool="cmd.run"} 1`)
	})
}

// A result produced while the daemon's stream was down reaches the waiting Exec
// after the daemon reconnects; the same result sent again after a later reconnect
// (the ack was lost) is acked and changes nothing.
func TestExecResultAcrossReconnect(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n, st := connected(t, srv)
		r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/sleep", Args: []string{"3"}})
		r.next(t) // started
		id := st.expectInvoke().GetCommandId()
		st.progress(id, 1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "before the drop\n")
		if out := r.next(t).GetOutput(); string(out.GetData()) != "before the drop\n" {
			t.Fatalf("output = %v", out)
		}

		st.hangUp()
		waitStatus(t, srv, n.id, edgev1.HostStatus_HOST_STATUS_DISCONNECTED)
		r.quiet(t, 300*time.Millisecond) // still waiting, not failed

		st2 := n.open(t, time.Now)
		st2.hello()
		res := &edgev1.CommandResult{CommandId: id, ExitCode: 3, LastSequence: 2}
		st2.result(res)
		got := r.next(t).GetResult()
		if got.GetExitCode() != 3 || got.GetOk() || got.GetLastSequence() != 2 {
			t.Fatalf("result = %v", got)
		}
		if err := r.end(t); err != nil {
			t.Fatalf("Exec ended with %v", err)
		}

		// The ack was lost: the daemon reconnects and sends the result again.
		st2.hangUp()
		st3 := n.open(t, time.Now)
		st3.hello()
		st3.result(res)
		st3.heartbeat() // the stream lives on

		if a := execAudits(t, srv, n.id); len(a) != 1 || a[0].Result != "failed" || a[0].Details["exit_code"] != "3" {
			t.Fatalf("exec audit entries = %+v, want one failed", a)
		}
		wantMetric(t, metricsText(t, srv), `aegis_edge_tool_calls_total{result="failed",tool="cmd.run"} 1`)
	})
}

// A daemon can neither feed another node's call nor end it.
func TestExecResultFromAnotherNodeIgnored(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n, st := connected(t, srv)
	_, other := connected(t, srv)
	r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/true"})
	r.next(t)
	id := st.expectInvoke().GetCommandId()
	other.progress(id, 1, edgev1.OutputStream_OUTPUT_STREAM_STDOUT, "forged\n")
	other.result(&edgev1.CommandResult{CommandId: id, Ok: true})
	r.quiet(t, 300*time.Millisecond)
	st.result(&edgev1.CommandResult{CommandId: id, ExitCode: 1})
	if got := r.next(t).GetResult(); got.GetExitCode() != 1 {
		t.Fatalf("result = %v, want the real node's", got)
	}
}

// Closing the Exec (the operator's Ctrl-C) sends CancelTool to the daemon; its
// CANCELLED result is still acked, audited and counted.
func TestExecCancel(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n, st := connected(t, srv)
		r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/sleep", Args: []string{"60"}})
		r.next(t)
		id := st.expectInvoke().GetCommandId()

		r.cancel()
		if err := r.end(t); connect.CodeOf(err) != connect.CodeCanceled {
			t.Fatalf("cancelled Exec ended with %v", err)
		}
		cmd := st.expectCommand()
		if cmd.GetCancelTool().GetCommandId() != id {
			t.Fatalf("expected CancelTool{%s}, got %v", id, cmd)
		}
		st.result(&edgev1.CommandResult{CommandId: id, ExitCode: -1, ErrorKind: edgev1.ToolErrorKind_TOOL_ERROR_KIND_CANCELLED, ErrorMessage: "cancelled"})
		if a := execAudits(t, srv, n.id); len(a) != 1 || a[0].Result != "cancelled" {
			t.Fatalf("exec audit entries = %+v, want one cancelled", a)
		}
		wantMetric(t, metricsText(t, srv), `aegis_edge_tool_calls_total{result="cancelled",tool="cmd.run"} 1`)
	})
}

// A daemon that never answers: the Exec ends at deadline + grace as
// EDGE_DISCONNECTED, and a result arriving later is acked and ignored.
func TestExecNoResultByDeadlinePlusGrace(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{ExecGrace: 300 * time.Millisecond})
	n, st := connected(t, srv)
	begin := time.Now()
	r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/sleep", Args: []string{"5"}, Deadline: durationpb.New(time.Second)})
	r.next(t)
	id := st.expectInvoke().GetCommandId()
	st.hangUp()
	res := r.next(t).GetResult()
	if res.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED {
		t.Fatalf("result = %v", res)
	}
	if took := time.Since(begin); took < 1300*time.Millisecond {
		t.Errorf("gave up after %s, before deadline + grace", took)
	}
	if err := r.end(t); err != nil {
		t.Fatal(err)
	}
	st2 := n.open(t, time.Now)
	st2.hello()
	st2.result(&edgev1.CommandResult{CommandId: id, ErrorKind: edgev1.ToolErrorKind_TOOL_ERROR_KIND_TIMEOUT, ExitCode: -1})
	if a := execAudits(t, srv, n.id); len(a) != 1 || a[0].Result != "edge_disconnected" {
		t.Fatalf("exec audit entries = %+v", a)
	}
}

func TestExecBadRequests(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n := enroll(t, srv, srv.EnrollmentToken(t))
	for name, req := range map[string]*edgev1.ExecRequest{
		"no command":        {NodeId: n.id},
		"negative deadline": {NodeId: n.id, Command: "/bin/true", Deadline: durationpb.New(-time.Second)},
		"huge deadline":     {NodeId: n.id, Command: "/bin/true", Deadline: durationpb.New(48 * time.Hour)},
	} {
		r := startExec(t, srv.AdminClient(), req)
		if err := r.end(t); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: "n-000000000000", Command: "/bin/true"})
	if err := r.end(t); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown host: %v, want NotFound", err)
	}
}

func peekToken(t *testing.T, tok string) nodetoken.Claims {
	t.Helper()
	c, err := nodetoken.Peek(tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// SetHostSecurityContext: the next token carries the context and a bumped version;
// with refresh_now the live stream is told to refresh; the next InvokeTool names the
// new context. A bad name changes nothing.
func TestSetHostSecurityContext(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		admin := srv.AdminClient()
		n, st := connected(t, srv)
		v0 := peekToken(t, n.token).SecurityContextVersion

		resp, err := admin.SetHostSecurityContext(ctx, connect.NewRequest(&edgev1.SetHostSecurityContextRequest{
			NodeId: n.id, SecurityContext: "ops", RefreshNow: true}))
		if err != nil {
			t.Fatal(err)
		}
		if !resp.Msg.GetRefreshSent() || resp.Msg.GetHost().GetSecurityContext() != "ops" {
			t.Fatalf("response = %v", resp.Msg)
		}
		if cmd := st.expectCommand(); cmd.GetRefreshToken() == nil || !strings.Contains(cmd.GetRefreshToken().GetReason(), "ops") {
			t.Fatalf("expected RefreshToken naming the context, got %v", cmd)
		}
		tok, err := n.attest(t)
		if err != nil {
			t.Fatal(err)
		}
		c := peekToken(t, tok)
		if c.SecurityContext != "ops" || c.SecurityContextVersion != v0+1 {
			t.Fatalf("token after the change: sctx=%q sctxv=%d, want ops %d", c.SecurityContext, c.SecurityContextVersion, v0+1)
		}

		// Without refresh_now nothing is sent; the next token still carries it.
		resp, err = admin.SetHostSecurityContext(ctx, connect.NewRequest(&edgev1.SetHostSecurityContextRequest{
			NodeId: n.id, SecurityContext: "readonly"}))
		if err != nil || resp.Msg.GetRefreshSent() {
			t.Fatalf("without refresh_now: %v %v", resp, err)
		}
		st.heartbeat() // the next thing on the stream is the ack, not a command
		tok, err = n.attest(t)
		if err != nil {
			t.Fatal(err)
		}
		if c := peekToken(t, tok); c.SecurityContext != "readonly" || c.SecurityContextVersion != v0+2 {
			t.Fatalf("token: sctx=%q sctxv=%d, want readonly %d", c.SecurityContext, c.SecurityContextVersion, v0+2)
		}
		r := startExec(t, admin, &edgev1.ExecRequest{NodeId: n.id, Command: "/usr/bin/uptime"})
		r.next(t)
		if inv := st.expectInvoke(); inv.GetSecurityContext() != "readonly" {
			t.Fatalf("InvokeTool.security_context = %q, want readonly", inv.GetSecurityContext())
		}
		r.cancel()

		// Bad names: InvalidArgument, nothing changed, nothing audited.
		before, err := srv.Store.GetDaemon(ctx, n.id)
		if err != nil {
			t.Fatal(err)
		}
		audits, _ := srv.Store.ListAudit(ctx, "", 0, 1000)
		for _, bad := range []string{"", "-ops", "has space", "a/b", strings.Repeat("x", 65), "ünï"} {
			_, err := admin.SetHostSecurityContext(ctx, connect.NewRequest(&edgev1.SetHostSecurityContextRequest{
				NodeId: n.id, SecurityContext: bad, RefreshNow: true}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("name %q: %v, want InvalidArgument", bad, err)
			}
		}
		after, err := srv.Store.GetDaemon(ctx, n.id)
		if err != nil {
			t.Fatal(err)
		}
		if after.SecurityContext != before.SecurityContext || after.SecurityContextVersion != before.SecurityContextVersion {
			t.Errorf("a refused name changed the host: %q v%d -> %q v%d", before.SecurityContext, before.SecurityContextVersion, after.SecurityContext, after.SecurityContextVersion)
		}
		if again, _ := srv.Store.ListAudit(ctx, "", 0, 1000); len(again) != len(audits) {
			t.Errorf("a refused name was audited")
		}

		_, err = admin.SetHostSecurityContext(ctx, connect.NewRequest(&edgev1.SetHostSecurityContextRequest{NodeId: "n-000000000000", SecurityContext: "ops"}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("unknown host: %v, want NotFound", err)
		}
	})
}

// A control plane shutting down ends the Execs it holds (EDGE_DISCONNECTED) instead
// of keeping its graceful shutdown open until their deadlines.
func TestExecEndsOnServerShutdown(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n, st := connected(t, srv)
	r := startExec(t, srv.AdminClient(), &edgev1.ExecRequest{NodeId: n.id, Command: "/bin/sleep", Args: []string{"60"}})
	r.next(t)
	st.expectInvoke()
	begin := time.Now()
	go srv.Stop()
	// No result: the command goes on on the host, and the caller is told to attach
	// again (Unavailable), not that the command ended.
	err := r.end(t)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "shutting down") || !strings.Contains(err.Error(), "--attach") {
		t.Fatalf("Exec ended with %v, want Unavailable saying how to attach again", err)
	}
	if took := time.Since(begin); took > 3*time.Second {
		t.Errorf("the Exec ended %s after the shutdown began", took)
	}
}
