// Package tools owns running a tool call on the host: cmd.run starts the executable
// the policy allowed (never through a shell) in a process group of its own, in the
// decided working directory and environment, streams its stdout and stderr as
// ordered chunks up to an output cap, and kills the whole group when the deadline
// passes or the call is cancelled. It knows nothing of the stream or of keys: a key
// rotation or token refresh cannot touch a running call.
package tools

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// MaxChunk is the largest piece of output one Chunk carries.
const MaxChunk = 32 << 10

// Stream names where output came from.
type Stream int

const (
	Stdout Stream = iota + 1
	Stderr
)

// Chunk is a piece of output. Sequences start at 1 and follow the order the output
// was read in, stdout and stderr interleaved.
type Chunk struct {
	Seq    uint64
	Stream Stream
	Data   []byte
}

// Kind says why a call did not run to completion (zero: it did).
type Kind int

const (
	KindNone Kind = iota
	KindTimeout
	KindCancelled
	KindToolNotFound
	KindInternal
)

// Spec is one allowed call.
type Spec struct {
	Path string
	Args []string
	Dir  string
	// Env is the whole environment (KEY=VALUE); nothing of edged's own leaks in.
	Env []string
	// Deadline, when passed, kills the process group (KindTimeout).
	Deadline time.Time
	// MaxOutput caps the bytes of output emitted (tools.max_output_bytes); what comes
	// after is read and dropped, and the result says it was truncated.
	MaxOutput int64
}

// Result ends a call.
type Result struct {
	// ExitCode is the process's exit status; 128+N when it died of signal N; -1 when
	// it never started.
	ExitCode  int
	Kind      Kind
	Message   string
	Truncated bool
	// LastSeq is the sequence of the last chunk emitted (0: none).
	LastSeq  uint64
	Duration time.Duration
}

// OK: the process ran and exited 0.
func (r Result) OK() bool { return r.Kind == KindNone && r.ExitCode == 0 }

// ErrCancelled is the cause to cancel a call's context with to report KindCancelled.
var ErrCancelled = errors.New("cancelled")

var errDeadline = errors.New("deadline passed")

// killGrace bounds how long output is still read after the process exited or was
// killed: a descendant that left the group may hold the pipes open.
const killGrace = 2 * time.Second

// Run runs spec until it exits, its deadline passes, or ctx is cancelled (cancel
// with context.CancelCauseFunc(ErrCancelled) for KindCancelled; any other end of ctx
// is reported as cancelled too, with its cause). emit is called for every chunk, in
// order, from one goroutine at a time; it may block (back pressure on the process).
func Run(ctx context.Context, spec Spec, emit func(Chunk)) Result {
	start := time.Now()
	res := run(ctx, spec, emit)
	res.Duration = time.Since(start)
	return res
}

func run(ctx context.Context, spec Spec, emit func(Chunk)) Result {
	if !spec.Deadline.IsZero() && !time.Now().Before(spec.Deadline) {
		return Result{ExitCode: -1, Kind: KindTimeout, Message: "the deadline passed before the command could start"}
	}
	ctx, cancelDeadline := context.WithDeadlineCause(ctx, deadlineOr(spec.Deadline), errDeadline)
	defer cancelDeadline()

	out := &output{emit: emit, limit: spec.MaxOutput}
	cmd := exec.CommandContext(ctx, spec.Path, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = spec.Env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	cmd.Stdin = nil // /dev/null
	cmd.Stdout = out.writer(Stdout)
	cmd.Stderr = out.writer(Stderr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = killGrace

	if err := cmd.Start(); err != nil {
		if ctx.Err() != nil {
			// Cancelled (or out of time) before the process existed.
			res := Result{ExitCode: -1}
			res.Kind, res.Message = stopped(ctx)
			return res
		}
		kind := KindInternal
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, exec.ErrNotFound) {
			kind = KindToolNotFound
		}
		return Result{ExitCode: -1, Kind: kind, Message: "could not start " + spec.Path + ": " + startError(err)}
	}
	waitErr := cmd.Wait()
	// The leader is gone; whatever it left behind in its group goes with it.
	_ = killGroup(cmd)

	res := Result{ExitCode: exitCode(cmd), Truncated: out.truncated(), LastSeq: out.lastSeq()}
	switch {
	case ctx.Err() != nil:
		res.Kind, res.Message = stopped(ctx)
	case errors.Is(waitErr, exec.ErrWaitDelay):
		res.Message = "a process the command started kept its output open after it exited; it was killed"
	default:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Message = "killed by signal " + ws.Signal().String()
		}
	}
	return res
}

// stopped says why ctx ended a call: its deadline, a cancel, or edged stopping.
func stopped(ctx context.Context) (Kind, string) {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errDeadline):
		return KindTimeout, "the deadline passed; the command's process group was killed"
	case errors.Is(cause, ErrCancelled):
		return KindCancelled, "cancelled; the command's process group was killed"
	default:
		return KindCancelled, fmt.Sprintf("stopped (%v); the command's process group was killed", cause)
	}
}

func deadlineOr(d time.Time) time.Time {
	if d.IsZero() {
		return time.Now().Add(100 * 365 * 24 * time.Hour)
	}
	return d
}

// killGroup sends SIGKILL to the command's whole process group. The group's id is
// the leader's pid (Setpgid); the kernel does not hand that id out again while any
// member lives.
func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

func exitCode(cmd *exec.Cmd) int {
	ps := cmd.ProcessState
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// startError is the reason without the path repeated.
func startError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// output numbers chunks from both pipes in the order they are read and enforces the
// cap. Once the cap is reached nothing more is emitted, but the pipes are still
// drained so the process is never blocked writing.
type output struct {
	mu    sync.Mutex
	emit  func(Chunk)
	limit int64
	sent  int64
	seq   uint64
	trunc bool
}

func (o *output) writer(s Stream) *streamWriter { return &streamWriter{o: o, s: s} }

func (o *output) write(s Stream, p []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(p) > 0 {
		room := o.limit - o.sent
		if room <= 0 {
			o.trunc = true
			return
		}
		n := min(len(p), MaxChunk, int(min(room, int64(MaxChunk))))
		o.seq++
		o.sent += int64(n)
		// The pipe reader reuses its buffer: the chunk gets its own copy.
		o.emit(Chunk{Seq: o.seq, Stream: s, Data: append([]byte(nil), p[:n]...)})
		p = p[n:]
	}
}

func (o *output) truncated() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.trunc
}

func (o *output) lastSeq() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seq
}

type streamWriter struct {
	o *output
	s Stream
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.o.write(w.s, p)
	return len(p), nil
}
