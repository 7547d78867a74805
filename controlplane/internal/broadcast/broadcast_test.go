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

// A replica skips its own notifications without decoding them: every event it
// encodes is recognised as its own, and no other replica's (one whose name extends
// or shortens this one's, one that needs escaping) nor a payload made in SQL.
func TestFromReplicaWithoutDecoding(t *testing.T) {
	const me = "cp-0"
	kinds := []Kind{KindRevoked, KindBlacklisted, KindCommand, KindPresented, KindTool}
	for _, k := range kinds {
		for _, origin := range []string{me, "cp-01", "cp-", "", `cp-0"`, "cp-0\\", "other"} {
			payload, err := Encode(Event{Kind: k, Origin: origin, NodeID: "n-1", At: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := FromReplica(payload, me), origin == me; got != want {
				t.Errorf("FromReplica(%s, %q) = %v, want %v", payload, me, got, want)
			}
			e, err := Decode(payload)
			if err != nil || e.Origin != origin {
				t.Errorf("Decode(%s) = %+v, %v", payload, e, err)
			}
		}
	}
	// As the blacklist trigger writes them (no origin) and junk.
	for _, payload := range []string{`{"k" : "revoked", "n" : "n-1", "w" : "revoke"}`, ``, `{"k":"`, `{"k":"x","o":"cp-0"`, `{"k":"x","o":"cp-0"}`} {
		if FromReplica(payload, me) {
			t.Errorf("FromReplica(%q) = true", payload)
		}
	}
}
