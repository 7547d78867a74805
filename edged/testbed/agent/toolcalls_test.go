package agent_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/internal/policy"
	"github.com/aegis-edge/aegis/edged/keystore"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ticker prints "tick N" every half second, 10 times: a 5-second cmd.run.
const tickerScript = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.5; done\n"

func tickerOutput() string {
	var b strings.Builder
	for i := 1; i <= 10; i++ {
		b.WriteString("tick " + strconv.Itoa(i) + "\n")
	}
	return b.String()
}

// toolHost is an enrolled, connected daemon with a local policy, whose scripts live
// in its own directory (allowed by the "ops" context).
type toolHost struct {
	srv     *cptest.Server
	r       *running
	nodeID  string
	scripts string
}

func testPolicy(t *testing.T, scripts string) *policy.Policy {
	t.Helper()
	p, err := policy.New(map[string]policy.Context{
		"ops": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {
			{Command: "/bin/echo", AnyArgs: true},
			{Command: "/bin/sh", Args: []string{"-c", "*"}},
			{Command: "/usr/bin/sleep", Args: []string{"*"}},
			{Command: "/usr/bin/head", Args: []string{"-c", "[0-9]*", "/dev/zero"}},
			{Command: scripts + "/*", AnyArgs: true},
		}}, Cwd: scripts},
		"readonly": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {{Command: "/usr/bin/uptime"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func startToolHost(t *testing.T, opts cptest.Options, mod func(*agent.Config)) *toolHost {
	t.Helper()
	opts.HeartbeatInterval = hb
	return addToolHost(t, cptest.Start(t, opts), mod)
}

// addToolHost enrolls and starts another daemon on srv.
func addToolHost(t *testing.T, srv *cptest.Server, mod func(*agent.Config)) *toolHost {
	t.Helper()
	dir := enrolled(t, srv)
	node, err := dir.ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	scripts, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, dir, func(c *agent.Config) {
		c.Policy = testPolicy(t, scripts)
		if mod != nil {
			mod(c)
		}
	})
	waitFor(t, "Connected", 5*time.Second, connected(r))
	return &toolHost{srv: srv, r: r, nodeID: node.NodeID, scripts: scripts}
}

func (h *toolHost) script(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(h.scripts, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// setContext assigns the host's security context on the server; with refresh the
// server tells the daemon, and this waits until the daemon's token carries it.
func (h *toolHost) setContext(t *testing.T, name string, refresh bool) {
	t.Helper()
	resp, err := h.srv.AdminClient().SetHostSecurityContext(context.Background(), connect.NewRequest(&edgev1.SetHostSecurityContextRequest{
		NodeId: h.nodeID, SecurityContext: name, RefreshNow: refresh,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if refresh {
		if !resp.Msg.GetRefreshSent() {
			t.Fatal("the server did not send a refresh to the live stream")
		}
		waitFor(t, "the token to carry security context "+name, 5*time.Second, func() bool {
			return h.r.a.Status().SecurityContext == name
		})
	}
}

// execution is what an Exec caller saw.
type execution struct {
	started *edgev1.ExecStarted
	chunks  []*edgev1.CommandProgress
	result  *edgev1.CommandResult
	err     error
}

func (e *execution) stdout() string {
	var b bytes.Buffer
	for _, c := range e.chunks {
		if c.GetStream() == edgev1.OutputStream_OUTPUT_STREAM_STDOUT {
			b.Write(c.GetData())
		}
	}
	return b.String()
}

func (e *execution) outputBytes() int {
	n := 0
	for _, c := range e.chunks {
		n += len(c.GetData())
	}
	return n
}

// exec runs a command through the admin API and checks what every Exec must hold:
// started first, chunks in sequence from 1, one result ending the stream.
func (h *toolHost) exec(t *testing.T, ctx context.Context, deadline time.Duration, onEvent func(*edgev1.ExecResponse), command string, args ...string) *execution {
	t.Helper()
	req := &edgev1.ExecRequest{NodeId: h.nodeID, Command: command, Args: args}
	if deadline > 0 {
		req.Deadline = durationpb.New(deadline)
	}
	stream, err := h.srv.AdminClient().Exec(ctx, connect.NewRequest(req))
	if err != nil {
		return &execution{err: err}
	}
	defer stream.Close()
	e := &execution{}
	for stream.Receive() {
		m := stream.Msg()
		if onEvent != nil {
			onEvent(m)
		}
		switch {
		case m.GetStarted() != nil:
			if e.started != nil || len(e.chunks) > 0 || e.result != nil {
				t.Errorf("started out of place")
			}
			e.started = m.GetStarted()
		case m.GetOutput() != nil:
			if e.result != nil {
				t.Errorf("output after the result")
			}
			e.chunks = append(e.chunks, m.GetOutput())
		case m.GetResult() != nil:
			if e.result != nil {
				t.Errorf("two results")
			}
			e.result = m.GetResult()
		}
	}
	e.err = stream.Err()
	for i, c := range e.chunks {
		if c.GetSequence() <= 0 || (i > 0 && c.GetSequence() <= e.chunks[i-1].GetSequence()) {
			t.Errorf("chunk %d has sequence %d after %d", i, c.GetSequence(), e.chunks[max(i-1, 0)].GetSequence())
		}
	}
	return e
}

func (h *toolHost) mustExec(t *testing.T, command string, args ...string) *execution {
	t.Helper()
	e := h.exec(t, context.Background(), 30*time.Second, nil, command, args...)
	if e.err != nil || e.result == nil {
		t.Fatalf("exec %s: err %v, result %v", command, e.err, e.result)
	}
	return e
}

func wantKind(t *testing.T, e *execution, kind edgev1.ToolErrorKind) {
	t.Helper()
	if e.result.GetErrorKind() != kind || e.result.GetOk() {
		t.Fatalf("result %v, want %s", e.result, kind)
	}
}

func TestExecUnderThePolicy(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, nil)
		h.setContext(t, "ops", true)

		e := h.mustExec(t, "echo", "hello", "world")
		if !e.result.GetOk() || e.result.GetExitCode() != 0 || e.stdout() != "hello world\n" || e.started.GetSecurityContext() != "ops" {
			t.Fatalf("echo: %+v %q", e.result, e.stdout())
		}
		if e.result.GetLastSequence() != uint64(len(e.chunks)) {
			t.Fatalf("last_sequence %d, %d chunks", e.result.GetLastSequence(), len(e.chunks))
		}
		e = h.mustExec(t, "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
		if e.result.GetExitCode() != 3 || e.result.GetOk() || e.result.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_UNSPECIFIED {
			t.Fatalf("exit 3: %+v", e.result)
		}
		// Both pipes are read as output comes; two writes at the same instant may be
		// read in either order, each with its own sequence.
		if len(e.chunks) != 2 || e.stdout() != "out\n" || e.chunks[0].GetStream() == e.chunks[1].GetStream() {
			t.Fatalf("chunks %v", e.chunks)
		}
		// The context's default cwd.
		pwd := h.script(t, "pwd.sh", "pwd\n")
		if e = h.mustExec(t, pwd); e.stdout() != h.scripts+"\n" {
			t.Fatalf("cwd %q, want %q", e.stdout(), h.scripts)
		}
		// Env is restricted: nothing of the daemon's environment gets through.
		t.Setenv("AEGIS_SECRET_FOR_TEST", "leak")
		env := h.script(t, "env.sh", "env\n")
		e = h.mustExec(t, env)
		if strings.Contains(e.stdout(), "AEGIS_SECRET_FOR_TEST") || !strings.Contains(e.stdout(), "PATH="+policy.SearchPath) {
			t.Fatalf("environment:\n%s", e.stdout())
		}
		// A rule's arguments: sleep takes one.
		wantKind(t, h.mustExec(t, "sleep", "0", "extra"), edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED)
		// No rule for id.
		e = h.mustExec(t, "id")
		wantKind(t, e, edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED)
		if len(e.chunks) != 0 || e.result.GetExitCode() != -1 {
			t.Fatalf("a denied call produced something: %+v", e)
		}
		// Allowed by the glob, but there is no such file.
		wantKind(t, h.mustExec(t, h.scripts+"/missing.sh"), edgev1.ToolErrorKind_TOOL_ERROR_KIND_TOOL_NOT_FOUND)
	})
}

func TestExecFailsClosed(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		marker := filepath.Join(t.TempDir(), "ran")
		touch := []string{"-c", "echo x > " + marker}
		check := func(t *testing.T, h *toolHost, why string) {
			t.Helper()
			e := h.mustExec(t, "/bin/sh", touch...)
			if e.result.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED || !strings.Contains(e.result.GetErrorMessage(), why) {
				t.Fatalf("result %+v, want denied because %s", e.result, why)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the denied command ran")
			}
		}

		h := startToolHost(t, opts, nil)
		t.Run("no context assigned", func(t *testing.T) { check(t, h, "no security context assigned") })
		t.Run("context unknown to the host", func(t *testing.T) {
			h.setContext(t, "prod", true)
			check(t, h, `"prod" is not defined`)
		})
		t.Run("call names another context than the token", func(t *testing.T) {
			h.setContext(t, "ops", true)
			h.setContext(t, "readonly", false) // server side only: the token still says ops
			check(t, h, `names security context "readonly" but this host's token names "ops"`)
		})
		t.Run("no rule in the context", func(t *testing.T) {
			h.setContext(t, "readonly", true)
			check(t, h, "no rule")
		})

		bare := addToolHost(t, h.srv, func(c *agent.Config) { c.Policy = nil })
		bare.setContext(t, "ops", true)
		t.Run("no policy", func(t *testing.T) { check(t, bare, "no local security policy") })
	})
}

// The very next call after a security-context change (with the server's refresh)
// is evaluated against the new context, on the same stream.
func TestSecurityContextChangeGovernsTheNextCall(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, nil)
		h.setContext(t, "ops", true)
		session := h.r.a.Status().SessionID
		if e := h.mustExec(t, "echo", "allowed"); !e.result.GetOk() {
			t.Fatalf("under ops: %+v", e.result)
		}
		h.setContext(t, "readonly", true)
		e := h.mustExec(t, "echo", "allowed")
		wantKind(t, e, edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED)
		if e.started.GetSecurityContext() != "readonly" {
			t.Fatalf("started %+v", e.started)
		}
		h.setContext(t, "ops", true)
		if e := h.mustExec(t, "echo", "allowed"); !e.result.GetOk() {
			t.Fatalf("back under ops: %+v", e.result)
		}
		if s := h.r.a.Status(); s.SessionID != session || s.Streams != 1 {
			t.Fatalf("the context changes re-established the stream: %+v", s)
		}
	})
}

// The guide's promise: a rotation (and a token refresh) in the middle of a
// 5-second cmd.run does not abort it, and the stream is never re-established.
func TestRotationAndRefreshDoNotTouchARunningCall(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, nil)
		requireRotation(t, h.srv)
		h.setContext(t, "ops", true)
		ticker := h.script(t, "ticker.sh", tickerScript)
		before := h.r.a.Status()

		var mu sync.Mutex
		var ticks int
		var actionErr []error
		rotated, refreshed := false, false
		var fpDuring string
		var expBefore time.Time
		e := h.exec(t, context.Background(), 30*time.Second, func(m *edgev1.ExecResponse) {
			if m.GetOutput() == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			ticks++
			switch {
			case ticks == 2 && !rotated:
				rotated = true
				actionErr = append(actionErr, h.srv.RequestKeyRotation(h.nodeID, 0))
			case ticks == 5 && !refreshed:
				refreshed = true
				fpDuring = h.r.a.Status().KeyFingerprint
				expBefore = h.r.a.Status().TokenExpires
				actionErr = append(actionErr, h.srv.RequestTokenRefresh(h.nodeID))
			}
		}, ticker)
		if err := errors.Join(actionErr...); err != nil {
			t.Fatal(err)
		}
		if e.err != nil || e.result == nil {
			t.Fatalf("exec: %v", e.err)
		}
		if !e.result.GetOk() || e.result.GetExitCode() != 0 || e.stdout() != tickerOutput() || e.result.GetLastSequence() != 10 {
			t.Fatalf("result %+v, output %q", e.result, e.stdout())
		}
		if d := e.result.GetDuration().AsDuration(); d < 4500*time.Millisecond {
			t.Fatalf("the call took %s: it did not run its 5 seconds", d)
		}
		after := h.r.a.Status()
		if after.SessionID != before.SessionID || after.Streams != 1 {
			t.Fatalf("the stream was re-established: before %+v, after %+v", before, after)
		}
		if after.Rotations != 1 || fpDuring == before.KeyFingerprint {
			t.Fatalf("the key did not rotate during the call: before %s, during %s, rotations %d", before.KeyFingerprint, fpDuring, after.Rotations)
		}
		waitFor(t, "the refreshed token", 3*time.Second, func() bool { return !h.r.a.Status().TokenExpires.Equal(expBefore) })
		waitFor(t, "the result acked", 3*time.Second, func() bool {
			s := h.r.a.Status()
			return s.PendingResults == 0 && s.ToolCalls == 0
		})
	})
}

func TestDeadlineAndCancelThroughExec(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, nil)
		h.setContext(t, "ops", true)
		spawn := h.script(t, "spawn.sh", "sleep 30 &\necho $!\nwait\n")

		start := time.Now()
		e := h.exec(t, context.Background(), time.Second, nil, spawn)
		if e.err != nil || e.result == nil {
			t.Fatalf("exec: %v", e.err)
		}
		wantKind(t, e, edgev1.ToolErrorKind_TOOL_ERROR_KIND_TIMEOUT)
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("the deadline kill took %s", took)
		}
		waitGone(t, pidIn(t, e.stdout()))

		// The caller goes away: the server cancels, the daemon kills the group.
		ctx, cancel := context.WithCancel(context.Background())
		var pid int
		e = h.exec(t, ctx, 30*time.Second, func(m *edgev1.ExecResponse) {
			if m.GetOutput() != nil {
				pid = pidIn(t, string(m.GetOutput().GetData()))
				cancel()
			}
		}, spawn)
		if connect.CodeOf(e.err) != connect.CodeCanceled {
			t.Fatalf("exec after cancel: %v", e.err)
		}
		waitGone(t, pid)
		waitFor(t, "the cancelled result acked", 5*time.Second, func() bool {
			s := h.r.a.Status()
			return s.ToolCalls == 0 && s.PendingResults == 0
		})
	})
}

func TestOutputCapThroughExec(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, func(c *agent.Config) { c.MaxOutputBytes = 100000 })
		h.setContext(t, "ops", true)
		e := h.mustExec(t, "head", "-c", "300000", "/dev/zero")
		if !e.result.GetOutputTruncated() || !e.result.GetOk() || e.outputBytes() != 100000 {
			t.Fatalf("result %+v, %d bytes", e.result, e.outputBytes())
		}
		for _, c := range e.chunks {
			if len(c.GetData()) > 32<<10 {
				t.Fatalf("a chunk of %d bytes", len(c.GetData()))
			}
		}
		if e = h.mustExec(t, "head", "-c", "1000", "/dev/zero"); e.result.GetOutputTruncated() || e.outputBytes() != 1000 {
			t.Fatalf("small output: %+v", e.result)
		}
	})
}

// netCut lets a test take the daemon's network away and give it back, without
// restarting the control plane (which keeps the Exec waiting).
type netCut struct {
	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func (n *netCut) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.down {
		return nil, errors.New("network down (test)")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		n.conns = append(n.conns, c)
	}
	return c, err
}

func (n *netCut) set(down bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.down = down
	if down {
		for _, c := range n.conns {
			c.Close()
		}
		n.conns = nil
	}
}

func (n *netCut) client(id *keystore.Identity) *http.Client {
	c := cpclient.NewHTTPClient(id.CA)
	c.Transport.(*http.Transport).DialContext = n.dial
	return c
}

// A result produced while the stream was down reaches the waiting Exec after the
// daemon reconnects.
func TestResultProducedWhileDisconnectedIsDelivered(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		cut := &netCut{}
		h := startToolHost(t, opts, func(c *agent.Config) { c.HTTPClient = cut.client })
		h.setContext(t, "ops", true)
		slow := h.script(t, "slow.sh", "echo first\nsleep 1\necho second\nexit 7\n")
		streamsBefore := h.r.a.Status().Streams

		cutOnce := false
		e := h.exec(t, context.Background(), 30*time.Second, func(m *edgev1.ExecResponse) {
			if m.GetOutput() == nil || cutOnce {
				return
			}
			cutOnce = true
			cut.set(true)
			waitFor(t, "the stream to drop", 5*time.Second, func() bool { return h.r.a.Status().Status != agent.StatusConnected })
			waitFor(t, "the result kept while disconnected", 5*time.Second, func() bool {
				s := h.r.a.Status()
				return s.ToolCalls == 0 && s.PendingResults == 1
			})
			cut.set(false)
		}, slow)
		if e.err != nil || e.result == nil {
			t.Fatalf("exec: %v", e.err)
		}
		// The second line was produced while the stream was down: kept, and sent
		// before the result on the new stream.
		if e.result.GetExitCode() != 7 || e.result.GetLastSequence() != 2 || e.stdout() != "first\nsecond\n" {
			t.Fatalf("result %+v, output %q, want both lines", e.result, e.stdout())
		}
		waitFor(t, "the result acked", 5*time.Second, func() bool { return h.r.a.Status().PendingResults == 0 })
		if s := h.r.a.Status(); s.Streams != streamsBefore+1 {
			t.Fatalf("streams %d, want one reconnect", s.Streams)
		}
	})
}

// Across a control-plane restart the result is kept and sent again on the new
// stream, where it is acknowledged (the Exec itself died with the old server).
func TestResultBufferedAcrossServerRestart(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, nil)
		h.setContext(t, "ops", true)
		slow := h.script(t, "slow.sh", "sleep 1\necho done\n")
		ctx, cancel := context.WithCancel(context.Background())
		started, done := make(chan struct{}), make(chan struct{})
		defer func() {
			cancel()
			<-done
		}()
		go func() {
			defer close(done)
			h.exec(t, ctx, 30*time.Second, func(m *edgev1.ExecResponse) {
				if m.GetStarted() != nil {
					close(started)
				}
			}, slow)
		}()
		<-started
		waitFor(t, "the call running", 3*time.Second, func() bool { return h.r.a.Status().ToolCalls == 1 })
		h.srv.Stop()
		waitFor(t, "the result kept while the server is down", 5*time.Second, func() bool {
			s := h.r.a.Status()
			return s.ToolCalls == 0 && s.PendingResults == 1
		})
		h.srv.Restart(t)
		waitFor(t, "the buffered result acked by the restarted server", 10*time.Second, func() bool {
			s := h.r.a.Status()
			return s.Status == agent.StatusConnected && s.PendingResults == 0
		})
	})
}

// An Exec dies with its control plane; the command goes on. AttachExec on the
// restarted control plane gets the output the daemon produced while no control plane
// followed (kept and sent on the new stream) and the result; an id the daemon does not
// know is answered RESULT_LOST at once.
func TestAttachAfterServerRestartGetsTheWholeOutput(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, nil)
		h.setContext(t, "ops", true)
		slow := h.script(t, "slow.sh", "echo one\nsleep 1\necho two\nsleep 1\necho three\nexit 4\n")
		var id string
		got := make(chan struct{})
		e := make(chan *execution, 1)
		go func() {
			e <- h.exec(t, context.Background(), 30*time.Second, func(m *edgev1.ExecResponse) {
				if s := m.GetStarted(); s != nil {
					id = s.GetCommandId()
				}
				if m.GetOutput() != nil {
					close(got)
				}
			}, slow)
		}()
		<-got
		h.srv.Stop()
		if first := <-e; first.result != nil || connect.CodeOf(first.err) != connect.CodeUnavailable || first.stdout() != "one\n" {
			t.Fatalf("Exec across the stop: result %v, err %v, output %q", first.result, first.err, first.stdout())
		}
		waitFor(t, "the call finished while the server is down", 5*time.Second, func() bool {
			s := h.r.a.Status()
			return s.ToolCalls == 0 && s.PendingResults == 1
		})
		h.srv.Restart(t)
		waitFor(t, "the daemon back", 10*time.Second, func() bool { return h.r.a.Status().Status == agent.StatusConnected })

		var out bytes.Buffer
		var res *edgev1.CommandResult
		for res == nil || res.GetErrorKind() == edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED {
			out.Reset()
			stream, err := h.srv.AdminClient().AttachExec(context.Background(), connect.NewRequest(&edgev1.AttachExecRequest{NodeId: h.nodeID, CommandId: id}))
			if err != nil {
				t.Fatal(err)
			}
			for stream.Receive() {
				if o := stream.Msg().GetOutput(); o != nil {
					out.Write(o.GetData())
				}
				if r := stream.Msg().GetResult(); r != nil {
					res = r
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			stream.Close()
		}
		if res.GetExitCode() != 4 || out.String() != "two\nthree\n" {
			t.Fatalf("attach: result %v, output %q; want exit 4 and the lines produced while down", res, out.String())
		}

		stream, err := h.srv.AdminClient().AttachExec(context.Background(), connect.NewRequest(&edgev1.AttachExecRequest{NodeId: h.nodeID, CommandId: "c-" + strings.Repeat("5a", 16)}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		var lost *edgev1.CommandResult
		for stream.Receive() {
			lost = stream.Msg().GetResult()
		}
		if lost.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_RESULT_LOST || !strings.Contains(lost.GetErrorMessage(), "does not know") {
			t.Fatalf("attach to an unknown id: %v (%v)", lost, stream.Err())
		}
	})
}

// On shutdown, running calls are killed with their process groups.
func TestShutdownKillsRunningCalls(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		h := startToolHost(t, opts, nil)
		h.setContext(t, "ops", true)
		spawn := h.script(t, "spawn.sh", "sleep 30 &\necho $!\nwait\n")
		out := make(chan string, 1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		defer func() {
			cancel()
			<-done
		}()
		go func() {
			defer close(done)
			h.exec(t, ctx, 30*time.Second, func(m *edgev1.ExecResponse) {
				if m.GetOutput() != nil {
					out <- string(m.GetOutput().GetData())
				}
			}, spawn)
		}()
		pid := pidIn(t, <-out)
		if err := h.r.stop(); err != nil {
			t.Fatal(err)
		}
		waitGone(t, pid)
	})
}

func pidIn(t *testing.T, s string) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || pid <= 0 {
		t.Fatalf("no pid in %q", s)
	}
	return pid
}

// gone: pid runs nothing any more (a zombie waiting for a reaper counts as gone).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	waitFor(t, "process "+strconv.Itoa(pid)+" to be gone", 5*time.Second, func() bool { return gone(pid) })
}
