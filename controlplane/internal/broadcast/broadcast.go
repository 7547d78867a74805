// Package broadcast owns how a change committed by one control-plane replica reaches
// the others that share its database: a node revoked (the replica holding its stream
// kicks it), tokens blacklisted (every replica adds them to its in-memory
// blacklist), and a command for a node (the replica holding its stream sends it).
// With SQLite there is one process and nothing to carry (Local); with PostgreSQL the
// events travel by LISTEN/NOTIFY (Postgres). Events carry ids, never a token or key.
package broadcast

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Kind names what an Event reports.
type Kind string

const (
	// KindRevoked: NodeID was revoked (Why is "revoke" or "logout"); the replica
	// holding its stream ends it with Disconnect{REVOKED}.
	KindRevoked Kind = "revoked"
	// KindBlacklisted: Tokens were committed to token_blacklist.
	KindBlacklisted Kind = "blacklisted"
	// KindCommand: Command is for NodeID's stream, wherever it is.
	KindCommand Kind = "command"
	// KindPresented: NodeID's stream on the origin replica presented new
	// credentials (Presented) in an envelope that replica verified; a fleet run
	// driven elsewhere waits for them.
	KindPresented Kind = "presented"
	// KindTool: output or the result of tool call Tool.CommandID arrived on
	// NodeID's stream at the origin replica; the replica whose caller waits for the
	// call hands it over, the others ignore it.
	KindTool Kind = "tool"
)

// Event is one change for the other replicas.
type Event struct {
	Kind Kind `json:"k"`
	// Origin is the replica that published it; it ignores its own events, having
	// acted on the change already.
	Origin string `json:"o"`
	NodeID string `json:"n,omitempty"`
	// Why says why a node was revoked ("revoke", "logout").
	Why     string    `json:"w,omitempty"`
	Tokens  []Token   `json:"t,omitempty"`
	Command *Command  `json:"c,omitempty"`
	At      time.Time `json:"a"`
	// Presented is set for KindPresented.
	Presented *Presented `json:"p,omitempty"`
	// Tool is set for KindTool.
	Tool *ToolEvent `json:"x,omitempty"`
}

// ToolEvent is one piece of a tool call's output, or its result. A chunk larger
// than fits one notification travels as Parts events numbered by Part (0-based),
// in order.
type ToolEvent struct {
	CommandID string `json:"i"`
	Sequence  uint64 `json:"s,omitempty"`
	Stream    int    `json:"st,omitempty"`
	Data      []byte `json:"d,omitempty"`
	Part      int    `json:"pt,omitempty"`
	Parts     int    `json:"ps,omitempty"`
	// Result is set for the call's result (then there is no output).
	Result *ToolResult `json:"r,omitempty"`
}

// ToolResult is a tool call's result as the daemon reported it.
type ToolResult struct {
	ExitCode        int32         `json:"c"`
	OK              bool          `json:"ok,omitempty"`
	Kind            int           `json:"k,omitempty"`
	Message         string        `json:"m,omitempty"`
	OutputTruncated bool          `json:"t,omitempty"`
	Duration        time.Duration `json:"d,omitempty"`
	LastSequence    uint64        `json:"l,omitempty"`
}

// ToolPartBytes is the most output one KindTool event carries (base64 in JSON
// grows it by a third, and MaxPayload must still hold).
const ToolPartBytes = 5000

// SplitOutput cuts data into parts of at most ToolPartBytes (at least one).
func SplitOutput(data []byte) [][]byte {
	if len(data) <= ToolPartBytes {
		return [][]byte{data}
	}
	var out [][]byte
	for len(data) > 0 {
		n := min(len(data), ToolPartBytes)
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// Presented is what a stream proved: the fingerprint of the key that signed the
// envelope and the jti of the token it carried (ids, never the token).
type Presented struct {
	KeyFingerprint string `json:"f"`
	TokenJTI       string `json:"j"`
}

// Token is a blacklisted token by its id: enough to refuse it, never the token.
type Token struct {
	JTI       string `json:"j"`
	NodeID    string `json:"n,omitempty"`
	Reason    string `json:"r,omitempty"`
	ExpiresAt int64  `json:"e"` // unix seconds: when the entry may be purged
	AddedAt   int64  `json:"d,omitempty"`
}

// Command is a server->daemon command that crosses replicas.
type Command struct {
	// Kind is "refresh_token", "rotate_key", "invoke_tool", "cancel_tool" or
	// "rotation_policy".
	Kind       string `json:"k"`
	Reason     string `json:"r,omitempty"`
	FleetRunID string `json:"f,omitempty"`
	// KeepOld in nanoseconds; 0 is the host's default.
	KeepOld time.Duration `json:"ko,omitempty"`
	// CommandID names the tool call ("invoke_tool", "cancel_tool").
	CommandID string `json:"i,omitempty"`
	// Invoke is the call to run ("invoke_tool").
	Invoke *Invocation `json:"v,omitempty"`
	// MaxKeyAge in nanoseconds, for "rotation_policy"; 0 is none.
	MaxKeyAge time.Duration `json:"ma,omitempty"`
}

// Invocation is a tool call for a daemon, as the session package has it.
type Invocation struct {
	Tool            string            `json:"t"`
	Command         string            `json:"c"`
	Args            []string          `json:"a,omitempty"`
	Cwd             string            `json:"w,omitempty"`
	Env             map[string]string `json:"e,omitempty"`
	Deadline        time.Time         `json:"d"`
	SecurityContext string            `json:"s,omitempty"`
}

// Handler acts on another replica's events. Handle must not block for long: it runs
// on the listening goroutine.
type Handler interface {
	Handle(ctx context.Context, e Event)
	// Resync is called after the event stream was interrupted and is back: events
	// published meanwhile are lost, so the handler reloads what it caches.
	Resync(ctx context.Context) error
}

// Bus publishes events to the other replicas and delivers theirs to a Handler.
type Bus interface {
	// Publish sends e to every other replica. It is called after the change
	// committed; an error means the others may learn of it only on their next
	// resync.
	Publish(ctx context.Context, e Event) error
	// Shared reports whether other replicas may exist (a command for a node with
	// no stream here may then be for one of them).
	Shared() bool
	// Run delivers other replicas' events to h until ctx ends.
	Run(ctx context.Context, h Handler)
	Close()
}

// Local is the Bus of a single process (SQLite): there is nobody to tell.
type Local struct{}

var _ Bus = Local{}

func (Local) Publish(context.Context, Event) error { return nil }
func (Local) Shared() bool                         { return false }
func (Local) Run(ctx context.Context, _ Handler)   { <-ctx.Done() }
func (Local) Close()                               {}

// MaxPayload is PostgreSQL's NOTIFY payload limit (8000 bytes) less a margin.
const MaxPayload = 7900

// tokensPerEvent keeps a blacklist event well under MaxPayload: one Token encodes
// to at most ~200 bytes with the ids this control plane makes.
const tokensPerEvent = 30

// maxReason bounds a command's free-text reason.
const maxReason = 256

// Split breaks e into events that each fit MaxPayload: a blacklist event of many
// tokens becomes several, and a long command reason is cut.
func Split(e Event) []Event {
	if e.Command != nil && len(e.Command.Reason) > maxReason {
		c := *e.Command
		c.Reason = c.Reason[:maxReason]
		e.Command = &c
	}
	if len(e.Tokens) <= tokensPerEvent {
		return []Event{e}
	}
	var out []Event
	for rest := e.Tokens; len(rest) > 0; {
		n := min(len(rest), tokensPerEvent)
		part := e
		part.Tokens = rest[:n]
		out = append(out, part)
		rest = rest[n:]
	}
	return out
}

// Encode is e as a NOTIFY payload.
func Encode(e Event) (string, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return "", err
	}
	if len(b) > MaxPayload {
		return "", fmt.Errorf("broadcast: %s event is %d bytes, over the %d-byte limit", e.Kind, len(b), MaxPayload)
	}
	return string(b), nil
}

// FromReplica reports whether payload is an event replica published, without
// decoding it: a replica hears its own notifications too, and under a stream of
// rotations (each announces the tokens it withdrew) decoding them only to drop them
// was a visible share of its CPU. Encode writes Kind, then Origin, then At (never
// omitted), so an own event starts {"k":"KIND","o":"REPLICA", exactly; anything
// else (another origin, a payload the blacklist trigger made) is decoded.
func FromReplica(payload, replica string) bool {
	return hasOrigin(payload, originMarker(replica))
}

// originMarker is what follows an event's kind when replica published it; a
// listener computes it once.
func originMarker(replica string) string {
	o, _ := json.Marshal(replica) // a string always marshals
	return `","o":` + string(o) + `,`
}

// hasOrigin: payload is {"k":"KIND followed by marker.
func hasOrigin(payload, marker string) bool {
	rest, ok := strings.CutPrefix(payload, `{"k":"`)
	if !ok {
		return false
	}
	i := strings.IndexByte(rest, '"')
	return i >= 0 && strings.HasPrefix(rest[i:], marker)
}

// Decode parses a NOTIFY payload.
func Decode(payload string) (Event, error) {
	var e Event
	if err := json.Unmarshal([]byte(payload), &e); err != nil {
		return Event{}, fmt.Errorf("broadcast: payload does not decode: %w", err)
	}
	return e, nil
}
