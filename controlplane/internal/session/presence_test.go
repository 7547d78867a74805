package session

import (
	"context"
	"testing"
)

// What a stream here presents is handed to the hook (first envelope and each
// change, not a repeat); what another replica reported is learned silently, and
// wakes a waiter all the same.
func TestPresenceOnChangeAndLearn(t *testing.T) {
	p := NewPresence()
	var told []Credentials
	p.OnChange(func(nodeID string, c Credentials) {
		if nodeID != "n1" {
			t.Errorf("hook for node %q", nodeID)
		}
		told = append(told, c)
	})
	a := Credentials{KeyFingerprint: "SHA256:a", TokenJTI: "j1"}
	b := Credentials{KeyFingerprint: "SHA256:b", TokenJTI: "j2"}
	p.Presented("n1", a)
	p.Presented("n1", a)
	p.Presented("n1", b)
	if len(told) != 2 || told[0] != a || told[1] != b {
		t.Fatalf("hook saw %v, want [%v %v]", told, a, b)
	}

	c := Credentials{KeyFingerprint: "SHA256:c", TokenJTI: "j3"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Wait(ctx, "n1", func(got Credentials) bool { return got == c }) }()
	p.Learn("n1", c)
	if err := <-done; err != nil {
		t.Fatalf("a waiter was not woken by learned credentials: %v", err)
	}
	if len(told) != 2 {
		t.Fatalf("learned credentials went to the hook: %v", told)
	}
	if got, ok, _ := p.Current("n1"); !ok || got != c {
		t.Fatalf("Current = %v %v, want %v", got, ok, c)
	}
}
