package session_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
)

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func storeWith(t *testing.T, nodes ...string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "cp.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.CreateTenant(t.Context(), store.Tenant{ID: "t-1", Name: "one", Kind: store.TenantTeam, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	for _, id := range nodes {
		key := sha256.Sum256([]byte(id))
		if err := s.InsertDaemon(t.Context(), store.Daemon{NodeID: id, TenantID: "t-1", DisplayName: id, OS: "linux", PublicKey: key[:], Status: store.DaemonActive, EnrolledAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func lastSeenAt(t *testing.T, s store.Store, id string) time.Time {
	t.Helper()
	d, err := s.GetDaemon(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return d.LastSeenAt
}

// Touches from many streams at once keep the newest time per node (an older one
// arriving late never wins), one Flush writes each node's newest time, a failed
// Flush keeps them for the next, and Forget drops only what is written.
func TestLastSeenKeepsTheNewestAndFlushesIt(t *testing.T) {
	var nodes []string
	for i := range 50 {
		nodes = append(nodes, fmt.Sprintf("n-%02d", i))
	}
	s := storeWith(t, nodes...)
	l := session.NewLastSeen(s, slog.New(slog.DiscardHandler))
	var wg sync.WaitGroup
	for _, id := range nodes {
		for k := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.Touch(id, t0.Add(time.Duration(k)*time.Second))
			}()
		}
	}
	wg.Wait()
	newest := t0.Add(19 * time.Second)
	for _, id := range nodes {
		if got := l.Latest(id); !got.Equal(newest) {
			t.Fatalf("%s: Latest %v, want %v", id, got, newest)
		}
	}
	if err := l.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, id := range nodes {
		if got := lastSeenAt(t, s, id); !got.Equal(newest) {
			t.Fatalf("%s: last_seen_at %v after Flush, want %v", id, got, newest)
		}
	}

	// Forget after a flush drops the node; a touch not yet written keeps it.
	l.Forget(nodes[0])
	if got := l.Latest(nodes[0]); !got.IsZero() {
		t.Fatalf("Forget after Flush left %v", got)
	}
	later := newest.Add(time.Minute)
	l.Touch(nodes[1], later)
	l.Forget(nodes[1])
	if got := l.Latest(nodes[1]); !got.Equal(later) {
		t.Fatalf("Forget dropped an unwritten time: %v", got)
	}

	// A Flush that fails (its context is gone before the write) keeps the time
	// for the next one.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := l.Flush(ctx); err == nil {
		t.Fatal("Flush with a cancelled context succeeded")
	}
	if got := lastSeenAt(t, s, nodes[1]); got.Equal(later) {
		t.Fatal("the failed Flush wrote after all")
	}
	if err := l.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := lastSeenAt(t, s, nodes[1]); !got.Equal(later) {
		t.Fatalf("the time a failed Flush held was not written by the next: %v", got)
	}
}
