package agent

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/internal/policy"
)

// fakeStream records what tool calls send, or fails like a dead stream.
type fakeStream struct {
	mu     sync.Mutex
	events []*edgev1.EdgeEvent
	fail   bool
}

func (f *fakeStream) send(ev *edgev1.EdgeEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("stream broken")
	}
	f.events = append(f.events, ev)
	return nil
}

func (f *fakeStream) snapshot() []*edgev1.EdgeEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*edgev1.EdgeEvent(nil), f.events...)
}

// waitResults waits until n results were sent (a result is sent just after it is
// counted as pending).
func (f *fakeStream) waitResults(t *testing.T, n int) []*edgev1.EdgeEvent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(f.results()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d results sent, want %d", len(f.results()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return f.snapshot()
}

func (f *fakeStream) results() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, e := range f.events {
		if r := e.GetCommandResult(); r != nil {
			ids = append(ids, r.GetCommandId())
		}
	}
	return ids
}

func (f *fakeStream) progress() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, e := range f.events {
		if e.GetCommandProgress() != nil {
			n++
		}
	}
	return n
}

func newTestCalls(t *testing.T, limit int) (*calls, *counts) {
	p, err := policy.New(map[string]policy.Context{"ops": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {
		{Command: "/bin/sh", Args: []string{"-c", "*"}},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	cnt := &counts{}
	c := newCalls(Config{Policy: p, MaxOutputBytes: 1 << 20, DefaultToolDeadline: 10 * time.Second, ResultBuffer: limit},
		slog.New(slog.DiscardHandler), cnt.set)
	return c, cnt
}

type counts struct {
	mu               sync.Mutex
	running, pending int
}

func (c *counts) set(r, p int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running, c.pending = r, p
}

func (c *counts) get() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running, c.pending
}

func shell(id, script string) *edgev1.InvokeTool {
	return &edgev1.InvokeTool{CommandId: id, Tool: policy.ToolCmdRun, SecurityContext: "ops",
		CmdRun: &edgev1.CmdRunArgs{Command: "/bin/sh", Args: []string{"-c", script}}}
}

func settle(t *testing.T, cnt *counts, pending int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, p := cnt.get()
		if r == 0 && p == pending {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("running %d, pending %d; want 0, %d", r, p, pending)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestResultsBufferedBoundedAndResentUntilAcked(t *testing.T) {
	c, cnt := newTestCalls(t, 2)
	// Disconnected: progress and results kept (the oldest call dropped past 2, its
	// output with it).
	for i, id := range []string{"c1", "c2", "c3"} {
		c.invoke(context.Background(), shell(id, "echo "+id), "ops", time.Time{})
		settle(t, cnt, min(i+1, 2))
	}
	s := &fakeStream{}
	c.connected(s.send)
	if got := s.results(); len(got) != 2 || got[0] != "c2" || got[1] != "c3" || s.progress() != 2 {
		t.Fatalf("resent %v (progress %d), want [c2 c3], each after its one chunk", got, s.progress())
	}
	first := s.snapshot()
	for i, e := range first {
		if r := e.GetCommandResult(); r != nil {
			if r.GetLastSequence() != 1 || !r.GetOk() {
				t.Fatalf("result %+v", r)
			}
			if i == 0 || first[i-1].GetCommandProgress().GetCommandId() != r.GetCommandId() || string(first[i-1].GetCommandProgress().GetData()) != r.GetCommandId()+"\n" {
				t.Fatalf("result %s not right after its kept output: %v", r.GetCommandId(), first)
			}
		}
	}
	// Only acked results leave the buffer; the rest go out again on the next stream.
	c.ack("c2")
	c.ack("unknown")
	settle(t, cnt, 1)
	c.disconnected()
	s2 := &fakeStream{}
	c.connected(s2.send)
	if got := s2.results(); len(got) != 1 || got[0] != "c3" {
		t.Fatalf("second stream got %v, want [c3]", got)
	}
	// Live: progress and result go out at once, in order.
	c.invoke(context.Background(), shell("c4", "echo a; sleep 0.1; echo b"), "ops", time.Time{})
	settle(t, cnt, 2)
	evs := s2.waitResults(t, 2)
	if s2.progress() != 2 || s2.results()[1] != "c4" {
		t.Fatalf("live events %v", evs)
	}
	last := evs[len(evs)-1].GetCommandResult()
	if last == nil || last.GetCommandId() != "c4" || last.GetLastSequence() != 2 {
		t.Fatalf("the result is not last: %v", evs)
	}
	// A repeated InvokeTool of a finished call resends its result, runs nothing.
	c.invoke(context.Background(), shell("c4", "echo again"), "ops", time.Time{})
	if got := s2.results(); len(got) != 3 || got[2] != "c4" || s2.progress() != 2 {
		t.Fatalf("repeat: %v", s2.snapshot())
	}
}

func TestSendFailureKeepsTheResult(t *testing.T) {
	c, cnt := newTestCalls(t, 4)
	broken := &fakeStream{fail: true}
	c.connected(broken.send)
	c.invoke(context.Background(), shell("c1", "true"), "ops", time.Time{})
	settle(t, cnt, 1)
	s := &fakeStream{}
	c.connected(s.send)
	if got := s.results(); len(got) != 1 || got[0] != "c1" {
		t.Fatalf("after a failed send the result was %v on the next stream", got)
	}
}

func TestCancelAndStopAll(t *testing.T) {
	c, cnt := newTestCalls(t, 4)
	s := &fakeStream{}
	c.connected(s.send)
	c.invoke(context.Background(), shell("c1", "sleep 30"), "ops", time.Time{})
	c.invoke(context.Background(), shell("c2", "sleep 30"), "ops", time.Time{})
	c.invoke(context.Background(), shell("c1", "sleep 30"), "ops", time.Time{}) // a repeat while running: ignored
	if r, _ := cnt.get(); r != 2 {
		t.Fatalf("running %d", r)
	}
	c.cancel("c1")
	c.cancel("nope")
	evs := s.waitResults(t, 1)
	if got := evs[0].GetCommandResult(); got.GetCommandId() != "c1" || got.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_CANCELLED {
		t.Fatalf("cancel: %v", evs)
	}
	start := time.Now()
	c.stopAll(errors.New("shutting down"))
	if time.Since(start) > 3*time.Second {
		t.Fatal("stopAll did not kill the call")
	}
	settle(t, cnt, 2)
	evs = s.waitResults(t, 2)
	if got := evs[1].GetCommandResult(); got.GetCommandId() != "c2" || got.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_CANCELLED {
		t.Fatalf("stopAll: %v", evs)
	}
}

func TestDeniedAndUnknownToolNeverRun(t *testing.T) {
	c, cnt := newTestCalls(t, 8)
	s := &fakeStream{}
	c.connected(s.send)
	c.invoke(context.Background(), shell("c1", "echo x"), "readonly", time.Time{}) // token says another context
	inv := shell("c2", "echo x")
	inv.Tool = "file.read"
	c.invoke(context.Background(), inv, "ops", time.Time{})
	settle(t, cnt, 2)
	kinds := map[string]edgev1.ToolErrorKind{}
	for _, e := range s.waitResults(t, 2) {
		if e.GetCommandProgress() != nil {
			t.Fatalf("a refused call produced output: %v", e)
		}
		kinds[e.GetCommandResult().GetCommandId()] = e.GetCommandResult().GetErrorKind()
	}
	if kinds["c1"] != edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED || kinds["c2"] != edgev1.ToolErrorKind_TOOL_ERROR_KIND_TOOL_NOT_FOUND {
		t.Fatalf("kinds %v", kinds)
	}
}

// Output kept while no stream was up goes out first, and a call that keeps printing
// while it does (the stream is slow) never has a chunk overtake an older one: the
// server drops a chunk whose sequence is not above the last it saw. A stream that
// breaks mid-flush keeps the rest for the next one.
func TestKeptOutputKeepsItsOrderAcrossReconnects(t *testing.T) {
	c, cnt := newTestCalls(t, 4)
	c.invoke(context.Background(), shell("c1", "i=0; while [ $i -lt 200 ]; do echo $i; i=$((i+1)); done"), "ops", time.Time{})
	for kept := 0; kept == 0; { // some output is produced with no stream
		c.mu.Lock()
		kept = len(c.unsent["c1"])
		c.mu.Unlock()
		runtime.Gosched()
	}
	broken := &fakeStream{fail: true}
	c.connected(broken.send)
	c.disconnected()
	slow := &fakeStream{}
	c.connected(func(ev *edgev1.EdgeEvent) error {
		time.Sleep(100 * time.Microsecond)
		return slow.send(ev)
	})
	settle(t, cnt, 1)
	evs := slow.waitResults(t, 1)
	var seq uint64
	var out strings.Builder
	for i, e := range evs {
		if p := e.GetCommandProgress(); p != nil {
			if p.GetSequence() != seq+1 {
				t.Fatalf("chunk %d has sequence %d after %d", i, p.GetSequence(), seq)
			}
			seq = p.GetSequence()
			out.Write(p.GetData())
		} else if i != len(evs)-1 {
			t.Fatalf("the result is not last: event %d of %d", i, len(evs))
		}
	}
	if r := evs[len(evs)-1].GetCommandResult(); r.GetLastSequence() != seq {
		t.Fatalf("result last_sequence %d, chunks up to %d", r.GetLastSequence(), seq)
	}
	if lines := strings.Count(out.String(), "\n"); lines != 200 {
		t.Fatalf("%d lines arrived, want all 200", lines)
	}
}
