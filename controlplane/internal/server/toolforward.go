package server

import (
	"context"
	"sync"

	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
)

// forwardTool publishes output or a result that arrived on a stream here for a tool
// call another replica's caller waits for (toolcall's Elsewhere hook). It runs on
// the stream's goroutine, so output stays in order.
func (s *Server) forwardTool(nodeID, commandID string, ev toolcall.Event) {
	if !s.bus.Shared() {
		return
	}
	ctx := context.Background()
	var err error
	switch {
	case ev.Result != nil:
		r := ev.Result
		err = s.bus.Publish(ctx, broadcast.Event{Kind: broadcast.KindTool, NodeID: nodeID, At: s.now().UTC(), Tool: &broadcast.ToolEvent{
			CommandID: commandID, Result: &broadcast.ToolResult{ExitCode: r.ExitCode, OK: r.OK, Kind: int(r.Kind), Message: r.Message,
				OutputTruncated: r.OutputTruncated, Duration: r.Duration, LastSequence: r.LastSequence},
		}})
	case ev.Progress != nil:
		p := ev.Progress
		parts := broadcast.SplitOutput(p.Data)
		for i, part := range parts {
			err = s.bus.Publish(ctx, broadcast.Event{Kind: broadcast.KindTool, NodeID: nodeID, At: s.now().UTC(), Tool: &broadcast.ToolEvent{
				CommandID: commandID, Sequence: p.Sequence, Stream: int(p.Stream), Data: part, Part: i, Parts: len(parts),
			}})
			if err != nil {
				break
			}
		}
	}
	if err != nil {
		// The caller's replica then ends the call as edge_disconnected at its
		// deadline plus grace, saying so.
		s.log.Warn("tool call output not forwarded to the replica waiting for it", "node", nodeID, "command_id", commandID, "err", err)
	}
}

// toolParts puts chunks that travelled in several events back together.
type toolParts struct {
	mu      sync.Mutex
	pending map[toolPartKey][]byte
}

type toolPartKey struct {
	node, command string
	seq           uint64
}

// maxPendingParts bounds the chunks being reassembled; a chunk whose parts were
// lost is dropped, as a lost notification would be.
const maxPendingParts = 1024

func (t *toolParts) deliver(s *Server, nodeID string, e broadcast.ToolEvent) {
	if e.Result != nil {
		r := e.Result
		t.forget(nodeID, e.CommandID)
		s.tools.ResultFrom(nodeID, e.CommandID, toolcall.Result{ExitCode: r.ExitCode, OK: r.OK, Kind: toolcall.ErrorKind(r.Kind),
			Message: r.Message, OutputTruncated: r.OutputTruncated, Duration: r.Duration, LastSequence: r.LastSequence})
		return
	}
	data := e.Data
	if e.Parts > 1 {
		k := toolPartKey{nodeID, e.CommandID, e.Sequence}
		t.mu.Lock()
		if t.pending == nil {
			t.pending = map[toolPartKey][]byte{}
		}
		if e.Part == 0 {
			if len(t.pending) >= maxPendingParts {
				clear(t.pending)
			}
			t.pending[k] = append([]byte(nil), e.Data...)
			t.mu.Unlock()
			return
		}
		got, ok := t.pending[k]
		if !ok {
			t.mu.Unlock()
			return // its first part was lost
		}
		got = append(got, e.Data...)
		if e.Part < e.Parts-1 {
			t.pending[k] = got
			t.mu.Unlock()
			return
		}
		delete(t.pending, k)
		t.mu.Unlock()
		data = got
	}
	s.tools.ProgressFrom(nodeID, e.CommandID, toolcall.Progress{Sequence: e.Sequence, Stream: toolcall.Stream(e.Stream), Data: data})
}

func (t *toolParts) forget(nodeID, commandID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.pending {
		if k.node == nodeID && k.command == commandID {
			delete(t.pending, k)
		}
	}
}
