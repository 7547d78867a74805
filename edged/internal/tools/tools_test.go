package tools_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/edged/internal/tools"
)

// recorder collects chunks and checks they arrive in sequence from 1.
type recorder struct {
	t      *testing.T
	mu     sync.Mutex
	chunks []tools.Chunk
}

func (r *recorder) emit(c tools.Chunk) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if want := uint64(len(r.chunks) + 1); c.Seq != want {
		r.t.Errorf("chunk sequence %d, want %d", c.Seq, want)
	}
	if len(c.Data) == 0 || len(c.Data) > tools.MaxChunk {
		r.t.Errorf("chunk of %d bytes", len(c.Data))
	}
	r.chunks = append(r.chunks, c)
}

func (r *recorder) text(s tools.Stream) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b bytes.Buffer
	for _, c := range r.chunks {
		if c.Stream == s {
			b.Write(c.Data)
		}
	}
	return b.String()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.chunks)
}

func spec(path string, args ...string) tools.Spec {
	return tools.Spec{Path: path, Args: args, Dir: "/", Env: []string{"PATH=/usr/bin:/bin"}, Deadline: time.Now().Add(30 * time.Second), MaxOutput: 1 << 20}
}

func run(t *testing.T, ctx context.Context, s tools.Spec) (tools.Result, *recorder) {
	t.Helper()
	rec := &recorder{t: t}
	res := tools.Run(ctx, s, rec.emit)
	if int(res.LastSeq) != rec.count() {
		t.Errorf("last sequence %d, %d chunks emitted", res.LastSeq, rec.count())
	}
	return res, rec
}

func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "script.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// gone reports whether pid no longer runs (a zombie waiting for a reaper counts as
// gone: it runs nothing).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// pid (comm) STATE ...
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEchoExitZero(t *testing.T) {
	res, rec := run(t, context.Background(), spec("/bin/echo", "hello", "world"))
	if !res.OK() || res.ExitCode != 0 || res.Kind != tools.KindNone || res.Truncated {
		t.Fatalf("result %+v", res)
	}
	if got := rec.text(tools.Stdout); got != "hello world\n" {
		t.Fatalf("stdout %q", got)
	}
}

func TestExitCodes(t *testing.T) {
	for _, code := range []int{1, 2, 42, 255} {
		res, _ := run(t, context.Background(), spec("/bin/sh", "-c", "exit "+strconv.Itoa(code)))
		if res.ExitCode != code || res.OK() || res.Kind != tools.KindNone {
			t.Errorf("exit %d: result %+v", code, res)
		}
	}
	res, _ := run(t, context.Background(), spec("/bin/sh", "-c", "kill -TERM $$"))
	if res.ExitCode != 128+int(syscall.SIGTERM) || res.OK() || !strings.Contains(res.Message, "signal") {
		t.Errorf("killed by a signal: result %+v", res)
	}
}

func TestStdoutAndStderrInterleavedInOrder(t *testing.T) {
	p := script(t, "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; sleep 0.2; echo err2 >&2\n")
	res, rec := run(t, context.Background(), spec(p))
	if !res.OK() {
		t.Fatalf("result %+v", res)
	}
	var order []string
	for _, c := range rec.chunks {
		order = append(order, strings.TrimSpace(string(c.Data)))
	}
	if strings.Join(order, ",") != "out1,err1,out2,err2" {
		t.Fatalf("order %v", order)
	}
	if rec.chunks[1].Stream != tools.Stderr || rec.chunks[0].Stream != tools.Stdout {
		t.Fatalf("streams %+v", rec.chunks)
	}
}

func TestOutputIsStreamedAsProduced(t *testing.T) {
	p := script(t, "for i in 1 2 3; do echo tick $i; sleep 0.5; done\n")
	rec := &recorder{t: t}
	done := make(chan tools.Result, 1)
	start := time.Now()
	go func() { done <- tools.Run(context.Background(), spec(p), rec.emit) }()
	for rec.count() == 0 {
		if time.Since(start) > 2*time.Second {
			t.Fatal("no output while the script runs")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if first := time.Since(start); first > time.Second {
		t.Fatalf("first chunk after %s: not streamed", first)
	}
	res := <-done
	if !res.OK() || rec.text(tools.Stdout) != "tick 1\ntick 2\ntick 3\n" || res.Duration < time.Second {
		t.Fatalf("result %+v, stdout %q", res, rec.text(tools.Stdout))
	}
}

func TestDeadlineKillsTheProcessGroup(t *testing.T) {
	// The script starts a grandchild (its own sleep) and reports its pid; both must
	// be gone when the deadline passes.
	p := script(t, "sleep 30 &\necho $!\nwait\n")
	s := spec(p)
	s.Deadline = time.Now().Add(500 * time.Millisecond)
	start := time.Now()
	res, rec := run(t, context.Background(), s)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("deadline kill took %s", took)
	}
	if res.Kind != tools.KindTimeout || res.OK() || res.ExitCode != 128+int(syscall.SIGKILL) {
		t.Fatalf("result %+v", res)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(rec.text(tools.Stdout)))
	if err != nil {
		t.Fatalf("grandchild pid %q", rec.text(tools.Stdout))
	}
	waitGone(t, pid)
}

func TestDeadlineAlreadyPassed(t *testing.T) {
	s := spec("/bin/echo", "never")
	s.Deadline = time.Now().Add(-time.Second)
	res, rec := run(t, context.Background(), s)
	if res.Kind != tools.KindTimeout || rec.count() != 0 {
		t.Fatalf("result %+v", res)
	}
}

func TestCancelKillsTheProcessGroup(t *testing.T) {
	p := script(t, "sleep 30 &\necho $!\nwait\n")
	ctx, cancel := context.WithCancelCause(context.Background())
	rec := &recorder{t: t}
	done := make(chan tools.Result, 1)
	go func() { done <- tools.Run(ctx, spec(p), rec.emit) }()
	for rec.count() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel(tools.ErrCancelled)
	var res tools.Result
	select {
	case res = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("cancel did not end the call")
	}
	if res.Kind != tools.KindCancelled || res.OK() {
		t.Fatalf("result %+v", res)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(rec.text(tools.Stdout)))
	waitGone(t, pid)
}

func TestAnEscapedDescendantDoesNotHoldTheCallOpen(t *testing.T) {
	// setsid leaves the group; the call still ends once the leader exits.
	p := script(t, "setsid sleep 30 &\necho $!\n")
	start := time.Now()
	res, rec := run(t, context.Background(), spec(p))
	if pid, err := strconv.Atoi(strings.TrimSpace(rec.text(tools.Stdout))); err == nil {
		defer syscall.Kill(pid, syscall.SIGKILL)
	}
	if time.Since(start) > 5*time.Second || res.ExitCode != 0 {
		t.Fatalf("result %+v after %s", res, time.Since(start))
	}
}

func TestOutputCap(t *testing.T) {
	// 200 KiB of output, cap 100,000 bytes.
	s := spec("/bin/sh", "-c", "head -c 204800 /dev/zero; echo done >&2")
	s.MaxOutput = 100000
	res, rec := run(t, context.Background(), s)
	if !res.Truncated || res.ExitCode != 0 {
		t.Fatalf("result %+v", res)
	}
	total := 0
	for _, c := range rec.chunks {
		total += len(c.Data)
	}
	if total != 100000 {
		t.Fatalf("%d bytes emitted, want exactly the cap", total)
	}
	if len(rec.chunks) < 4 {
		t.Fatalf("%d chunks for 100,000 bytes: chunks over 32 KiB?", len(rec.chunks))
	}

	s = spec("/bin/echo", "short")
	s.MaxOutput = 100000
	if res, _ := run(t, context.Background(), s); res.Truncated {
		t.Fatal("short output reported truncated")
	}
}

func TestEnvAndCwd(t *testing.T) {
	dir := t.TempDir()
	s := spec("/usr/bin/env")
	s.Env = []string{"A=1", "PATH=/usr/bin"}
	s.Dir = dir
	res, rec := run(t, context.Background(), s)
	if !res.OK() || rec.text(tools.Stdout) != "A=1\nPATH=/usr/bin\n" {
		t.Fatalf("env: %+v %q", res, rec.text(tools.Stdout))
	}
	res, rec = run(t, context.Background(), tools.Spec{Path: "/bin/pwd", Dir: dir, MaxOutput: 1000})
	real, _ := filepath.EvalSymlinks(dir)
	if got := strings.TrimSpace(rec.text(tools.Stdout)); !res.OK() || (got != dir && got != real) {
		t.Fatalf("cwd: %+v %q", res, got)
	}
	if res, _ := run(t, context.Background(), tools.Spec{Path: "/usr/bin/env", MaxOutput: 1000}); !res.OK() || res.LastSeq != 0 {
		t.Fatalf("edged's environment leaked into the call: %+v", res)
	}
}

func TestStartFailures(t *testing.T) {
	res, _ := run(t, context.Background(), spec("/no/such/binary"))
	if res.Kind != tools.KindToolNotFound || res.ExitCode != -1 {
		t.Fatalf("missing binary: %+v", res)
	}
	notExec := filepath.Join(t.TempDir(), "data")
	os.WriteFile(notExec, []byte("x"), 0o644)
	res, _ = run(t, context.Background(), spec(notExec))
	if res.Kind != tools.KindInternal {
		t.Fatalf("not executable: %+v", res)
	}
	s := spec("/bin/echo")
	s.Dir = "/no/such/dir"
	if res, _ = run(t, context.Background(), s); res.Kind == tools.KindNone {
		t.Fatalf("missing cwd: %+v", res)
	}
}

func TestConcurrentCalls(t *testing.T) {
	var wg sync.WaitGroup
	start := time.Now()
	for i := range 8 {
		wg.Go(func() {
			res, rec := run(t, context.Background(), spec("/bin/sh", "-c", "sleep 0.5; echo "+strconv.Itoa(i)))
			if !res.OK() || rec.text(tools.Stdout) != strconv.Itoa(i)+"\n" {
				t.Errorf("call %d: %+v %q", i, res, rec.text(tools.Stdout))
			}
		})
	}
	wg.Wait()
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("8 half-second calls took %s: not concurrent", took)
	}
}

func TestCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(tools.ErrCancelled)
	res, rec := run(t, ctx, spec("/bin/echo", "never"))
	if res.Kind != tools.KindCancelled || rec.count() != 0 {
		t.Fatalf("result %+v", res)
	}
}
