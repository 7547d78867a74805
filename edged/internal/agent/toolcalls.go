package agent

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/edged/internal/policy"
	"github.com/aegis-edge/aegis/edged/internal/tools"
	"google.golang.org/protobuf/types/known/durationpb"
)

// sendFunc seals an event with the key and token current at that moment and sends
// it on the live stream.
type sendFunc func(*edgev1.EdgeEvent) error

// calls are the tool calls of the identity being served. A call runs on its own
// goroutine with a context of its own, so nothing the stream does (a reconnect, a
// key rotation, a token refresh) reaches the process; only its deadline, a
// CancelTool, or the end of serving the identity does.
//
// Progress goes out on whatever stream is live when it is produced; what is produced
// while none is (or fails to send) is kept with the call, bounded by its output cap,
// and sent first, in order, on the next stream, so an operator who re-attaches after
// a control-plane restart gets the whole output. Results are kept, bounded, until the
// server acknowledges them, and sent again (after the call's kept output) on every
// new stream and when the server asks (QueryTool).
type calls struct {
	log       *slog.Logger
	maxOutput int64
	deadline  time.Duration
	limit     int
	policy    *policy.Policy
	onChange  func(running, pending int)

	mu      sync.Mutex
	link    sendFunc
	running map[string]context.CancelCauseFunc
	pending []*edgev1.CommandResult
	// unsent is each call's output not yet on a stream, in order; flushing names
	// the calls whose unsent output one goroutine is sending (no lock is held while
	// it does, and it sends the result after the output).
	unsent   map[string][]*edgev1.CommandProgress
	flushing map[string]bool
	wg       sync.WaitGroup
}

func newCalls(cfg Config, log *slog.Logger, onChange func(running, pending int)) *calls {
	return &calls{
		log: log, maxOutput: cfg.MaxOutputBytes, deadline: cfg.DefaultToolDeadline, limit: cfg.ResultBuffer,
		policy: cfg.Policy, onChange: onChange, running: map[string]context.CancelCauseFunc{},
		unsent: map[string][]*edgev1.CommandProgress{}, flushing: map[string]bool{},
	}
}

// changed reports the counts to the snapshot. Callers hold mu.
func (c *calls) changed() {
	c.onChange(len(c.running), len(c.pending))
}

// connected makes send the live stream and sends on it every call's kept output and
// every unacknowledged result.
func (c *calls) connected(send sendFunc) {
	c.mu.Lock()
	c.link = send
	// Finished calls first, oldest first, then the running ones' kept output.
	var ids []string
	for _, r := range c.pending {
		ids = append(ids, r.GetCommandId())
	}
	var runningIDs []string
	for id := range c.unsent {
		if c.result(id) == nil {
			runningIDs = append(runningIDs, id)
		}
	}
	slices.Sort(runningIDs)
	ids = append(ids, runningIDs...)
	c.mu.Unlock()
	for _, id := range ids {
		if !c.flush(id, send) {
			return
		}
	}
}

// flush sends id's kept output in order, then its result if it has finished. It
// reports false when a send failed (what was not sent is kept). When another
// goroutine is flushing id already, that one sends everything, result included.
func (c *calls) flush(id string, send sendFunc) bool {
	c.mu.Lock()
	if c.flushing[id] {
		c.mu.Unlock()
		return true
	}
	c.flushing[id] = true
	for {
		batch := c.unsent[id]
		delete(c.unsent, id)
		if len(batch) == 0 {
			delete(c.flushing, id)
			res := c.result(id)
			c.mu.Unlock()
			if res == nil {
				return true
			}
			if err := send(resultEvent(res)); err != nil {
				c.log.Warn("could not send a tool result; it is sent again on the next stream", "command_id", id, "error", err)
				return false
			}
			return true
		}
		c.mu.Unlock()
		for i, p := range batch {
			if err := send(progressEvent(p)); err != nil {
				c.mu.Lock()
				c.unsent[id] = append(batch[i:], c.unsent[id]...)
				delete(c.flushing, id)
				c.mu.Unlock()
				c.log.Warn("could not send a tool call's kept output; it is sent again on the next stream", "command_id", id, "error", err)
				return false
			}
		}
		c.log.Info("kept tool output sent", "command_id", id, "chunks", len(batch))
		c.mu.Lock()
	}
}

// result is id's unacknowledged result, or nil. Callers hold mu.
func (c *calls) result(id string) *edgev1.CommandResult {
	for _, r := range c.pending {
		if r.GetCommandId() == id {
			return r
		}
	}
	return nil
}

// disconnected: no stream until the next connected.
func (c *calls) disconnected() {
	c.mu.Lock()
	c.link = nil
	c.mu.Unlock()
}

func (c *calls) current() sendFunc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.link
}

// stopAll kills every running call and waits for their results to be recorded.
func (c *calls) stopAll(cause error) {
	c.mu.Lock()
	for _, cancel := range c.running {
		cancel(cause)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// invoke starts a call. Evaluation reads the security context from the token current
// now, so a refresh that changed it governs the very next call.
func (c *calls) invoke(ctx context.Context, inv *edgev1.InvokeTool, tokenContext string, localDeadline time.Time) {
	id := inv.GetCommandId()
	log := c.log.With("command_id", id, "tool", inv.GetTool())
	if id == "" {
		log.Warn("ignoring a tool call without a command id")
		return
	}
	c.mu.Lock()
	if _, ok := c.running[id]; ok {
		c.mu.Unlock()
		log.Info("ignoring a repeated tool call that is still running")
		return
	}
	for _, r := range c.pending {
		if r.GetCommandId() == id {
			c.mu.Unlock()
			log.Info("a repeated tool call already finished; sending its result again")
			c.deliver(r)
			return
		}
	}
	cctx, cancel := context.WithCancelCause(ctx)
	c.running[id] = cancel
	c.changed()
	c.wg.Add(1)
	c.mu.Unlock()

	args := inv.GetCmdRun()
	if localDeadline.IsZero() {
		localDeadline = time.Now().Add(c.deadline)
	}
	go func() {
		defer c.wg.Done()
		defer cancel(nil)
		start := time.Now()
		d, err := c.policy.Evaluate(policy.Call{
			TokenContext:     tokenContext,
			RequestedContext: inv.GetSecurityContext(),
			Tool:             inv.GetTool(),
			Command:          args.GetCommand(),
			Args:             args.GetArgs(),
			Cwd:              args.GetCwd(),
			Env:              args.GetEnv(),
		})
		var res *edgev1.CommandResult
		if err != nil {
			kind := edgev1.ToolErrorKind_TOOL_ERROR_KIND_DENIED
			var pe *policy.Error
			if errors.As(err, &pe) && pe.Kind == policy.ToolNotFound {
				kind = edgev1.ToolErrorKind_TOOL_ERROR_KIND_TOOL_NOT_FOUND
			}
			log.Warn("tool call refused by the local policy", "security_context", tokenContext, "command", args.GetCommand(), "reason", err)
			res = &edgev1.CommandResult{CommandId: id, ExitCode: -1, ErrorKind: kind, ErrorMessage: err.Error(), Duration: durationpb.New(time.Since(start))}
		} else {
			log.Info("tool call started", "security_context", d.Context, "command", d.Path, "args", len(d.Args), "dir", d.Dir, "deadline", localDeadline.UTC())
			out := tools.Run(cctx, tools.Spec{
				Path: d.Path, Args: d.Args, Dir: d.Dir, Env: d.Env,
				Deadline: localDeadline, MaxOutput: c.maxOutput,
			}, func(ch tools.Chunk) { c.progress(id, ch) })
			res = resultOf(id, out)
			log.Info("tool call ended", "exit_code", out.ExitCode, "error_kind", res.GetErrorKind(), "truncated", out.Truncated,
				"last_sequence", out.LastSeq, "took", out.Duration.Round(time.Millisecond))
		}
		c.mu.Lock()
		delete(c.running, id)
		c.keep(res)
		c.mu.Unlock()
		c.deliver(res)
	}()
}

// keep buffers res until acknowledged, dropping the oldest when the buffer is full.
// Callers hold mu.
func (c *calls) keep(res *edgev1.CommandResult) {
	if len(c.pending) >= c.limit {
		c.log.Warn("tool result buffer is full; the oldest unacknowledged result is dropped", "command_id", c.pending[0].GetCommandId(), "limit", c.limit)
		delete(c.unsent, c.pending[0].GetCommandId())
		c.pending = c.pending[1:]
	}
	c.pending = append(c.pending, res)
	c.changed()
}

// deliver sends a finished call's kept output and its result (kept until acked).
func (c *calls) deliver(res *edgev1.CommandResult) {
	send := c.current()
	if send == nil {
		c.log.Info("tool result kept until the stream is back", "command_id", res.GetCommandId())
		return
	}
	c.flush(res.GetCommandId(), send)
}

// progress sends a chunk on the live stream; with none (or output of this call still
// waiting to go out before it) the chunk is kept, in order, for the next stream.
func (c *calls) progress(id string, ch tools.Chunk) {
	stream := edgev1.OutputStream_OUTPUT_STREAM_STDOUT
	if ch.Stream == tools.Stderr {
		stream = edgev1.OutputStream_OUTPUT_STREAM_STDERR
	}
	p := &edgev1.CommandProgress{CommandId: id, Sequence: ch.Seq, Stream: stream, Data: ch.Data}
	c.mu.Lock()
	send := c.link
	if send == nil || c.flushing[id] || len(c.unsent[id]) > 0 {
		c.unsent[id] = append(c.unsent[id], p)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if err := send(progressEvent(p)); err != nil {
		c.mu.Lock()
		c.unsent[id] = append(c.unsent[id], p)
		c.mu.Unlock()
	}
}

// query answers QueryTool: a running call goes on (its kept output is sent), a
// finished one's output and result are sent again, and one this daemon does not
// know is reported lost, so the operator who re-attached is told at once.
func (c *calls) query(id string) {
	send := c.current()
	if send == nil {
		return
	}
	c.mu.Lock()
	_, running := c.running[id]
	known := running || c.result(id) != nil
	c.mu.Unlock()
	if known {
		c.flush(id, send)
		return
	}
	c.log.Info("the control plane asked for a tool call this daemon does not know", "command_id", id)
	_ = send(resultEvent(&edgev1.CommandResult{
		CommandId: id, ExitCode: -1, ErrorKind: edgev1.ToolErrorKind_TOOL_ERROR_KIND_RESULT_LOST,
		ErrorMessage: "edged on this host does not know the command: it restarted since, or its result buffer (tools.result_buffer) dropped the result",
	}))
}

func (c *calls) cancel(id string) {
	c.mu.Lock()
	cancel, ok := c.running[id]
	c.mu.Unlock()
	if !ok {
		c.log.Info("cancel for a tool call that is not running", "command_id", id)
		return
	}
	c.log.Info("cancelling tool call", "command_id", id)
	cancel(tools.ErrCancelled)
}

func (c *calls) ack(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, r := range c.pending {
		if r.GetCommandId() == id {
			c.pending = append(c.pending[:i:i], c.pending[i+1:]...)
			delete(c.unsent, id)
			c.changed()
			return
		}
	}
}

func progressEvent(p *edgev1.CommandProgress) *edgev1.EdgeEvent {
	return &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_CommandProgress{CommandProgress: p}}
}

func resultEvent(r *edgev1.CommandResult) *edgev1.EdgeEvent {
	return &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_CommandResult{CommandResult: r}}
}

func resultOf(id string, r tools.Result) *edgev1.CommandResult {
	kind := edgev1.ToolErrorKind_TOOL_ERROR_KIND_UNSPECIFIED
	switch r.Kind {
	case tools.KindTimeout:
		kind = edgev1.ToolErrorKind_TOOL_ERROR_KIND_TIMEOUT
	case tools.KindCancelled:
		kind = edgev1.ToolErrorKind_TOOL_ERROR_KIND_CANCELLED
	case tools.KindToolNotFound:
		kind = edgev1.ToolErrorKind_TOOL_ERROR_KIND_TOOL_NOT_FOUND
	case tools.KindInternal:
		kind = edgev1.ToolErrorKind_TOOL_ERROR_KIND_INTERNAL
	}
	return &edgev1.CommandResult{
		CommandId:       id,
		ExitCode:        int32(r.ExitCode),
		Ok:              r.OK(),
		ErrorKind:       kind,
		ErrorMessage:    r.Message,
		OutputTruncated: r.Truncated,
		Duration:        durationpb.New(r.Duration),
		LastSequence:    r.LastSeq,
	}
}

// tokenContext is the security context the current token names ("" when none).
func (a *Agent) tokenContext() string {
	a.tokMu.Lock()
	tok := a.token
	a.tokMu.Unlock()
	return tokenSecurityContext(tok)
}

// tokenSecurityContext reads the sctx claim, unverified: the daemon cannot check
// the server's signature, and need not, since a call must also name the same context
// in InvokeTool, which only the server sends.
func tokenSecurityContext(token string) string {
	c, err := nodetoken.Peek(token)
	if err != nil {
		return ""
	}
	return c.SecurityContext
}

// handleToolCommand acts on InvokeTool, CancelTool and CommandResultAck. It does not
// block the stream loop: a call runs on its own goroutine.
func (a *Agent) handleToolCommand(ctx context.Context, cmd *edgev1.EdgeCommand) {
	switch c := cmd.GetCommand().(type) {
	case *edgev1.EdgeCommand_InvokeTool:
		var deadline time.Time
		if d := c.InvokeTool.GetDeadline(); d != nil && d.AsTime().Unix() > 0 {
			// The deadline is on the server's clock.
			deadline = d.AsTime().Add(-time.Duration(a.offset.Load()))
		}
		a.calls.invoke(ctx, c.InvokeTool, a.tokenContext(), deadline)
	case *edgev1.EdgeCommand_CancelTool:
		a.calls.cancel(c.CancelTool.GetCommandId())
	case *edgev1.EdgeCommand_CommandResultAck:
		a.calls.ack(c.CommandResultAck.GetCommandId())
	case *edgev1.EdgeCommand_QueryTool:
		a.calls.query(c.QueryTool.GetCommandId())
	}
}
