package broadcast

import (
	"strings"
	"testing"
	"time"
)

// The biggest events this control plane makes fit PostgreSQL's NOTIFY limit once
// split, and decode to what was sent.
func TestSplitFitsPayloadLimit(t *testing.T) {
	var toks []Token
	for range 1000 {
		toks = append(toks, Token{JTI: strings.Repeat("j", 64), NodeID: "n-" + strings.Repeat("0", 62), Reason: "refreshed",
			ExpiresAt: time.Now().Unix(), AddedAt: time.Now().Unix()})
	}
	e := Event{Kind: KindBlacklisted, Origin: strings.Repeat("r", 255), Tokens: toks, At: time.Now()}
	var got int
	for _, part := range Split(e) {
		payload, err := Encode(part)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode(payload)
		if err != nil {
			t.Fatal(err)
		}
		got += len(back.Tokens)
	}
	if got != len(toks) {
		t.Fatalf("%d tokens after split, want %d", got, len(toks))
	}

	cmd := Event{Kind: KindCommand, Origin: "a:1", NodeID: "n-1", Command: &Command{Kind: "refresh_token", Reason: strings.Repeat("x", 20000)}}
	parts := Split(cmd)
	if len(parts) != 1 {
		t.Fatalf("a command split into %d events", len(parts))
	}
	if _, err := Encode(parts[0]); err != nil {
		t.Fatal(err)
	}
	if cmd.Command.Reason == parts[0].Command.Reason {
		t.Fatal("Split cut the caller's command in place or not at all")
	}
}
