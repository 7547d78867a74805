package session

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

// What every accepted heartbeat does to this package: Presence under unchanged
// credentials and a LastSeen touch, from many streams at once (one goroutine per
// stream, as ConnectEdge runs). A lock shared by every stream here becomes a
// convoy at fleet scale: run with -cpu 2 and compare with BenchmarkReference.
func BenchmarkHeartbeatPath(b *testing.B) {
	p := NewPresence()
	l := NewLastSeen(nil, slog.New(slog.DiscardHandler))
	creds := Credentials{KeyFingerprint: "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", TokenJTI: "jti-0123456789"}
	var next atomic.Int64
	now := time.Now()
	b.SetParallelism(512)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		node := fmt.Sprintf("node-%06d", next.Add(1))
		t := now
		for pb.Next() {
			t = t.Add(time.Millisecond)
			p.Presented(node, creds)
			l.Touch(node, t)
		}
	})
}

// BenchmarkReference is the same-run yardstick: a map lookup and a time compare
// per operation with nothing shared.
func BenchmarkReference(b *testing.B) {
	b.SetParallelism(512)
	b.RunParallel(func(pb *testing.PB) {
		m := map[string]time.Time{"node": {}}
		t := time.Now()
		for pb.Next() {
			t = t.Add(time.Millisecond)
			if t.After(m["node"]) {
				m["node"] = t
			}
		}
	})
}
