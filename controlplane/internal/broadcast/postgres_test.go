package broadcast_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
)

// collector is a Handler that keeps what it hears.
type collector struct {
	mu     sync.Mutex
	got    []broadcast.Event
	change chan struct{}
}

func (c *collector) Handle(_ context.Context, e broadcast.Event) {
	c.mu.Lock()
	c.got = append(c.got, e)
	c.mu.Unlock()
	select {
	case c.change <- struct{}{}:
	default:
	}
}

func (*collector) Resync(context.Context) error { return nil }

// Hundreds of concurrent publishers share the publishing transactions: every event
// reaches the other replica exactly once, each publisher's in the order it published
// them, and each Publish returned only once its event was committed.
func TestConcurrentPublishesAllArriveOnceAndInOrder(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, err := broadcast.OpenPostgres(ctx, url, "a", log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := broadcast.OpenPostgres(ctx, url, "b", log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	heard := &collector{change: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx, heard) }()

	const publishers, each = 200, 5
	var wg sync.WaitGroup
	errs := make(chan error, publishers*each)
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				e := broadcast.Event{Kind: broadcast.KindCommand, NodeID: fmt.Sprintf("n-%d", p), At: time.Now(),
					Command: &broadcast.Command{Kind: "refresh_token", Reason: fmt.Sprint(i)}}
				if err := a.Publish(ctx, e); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Publish: %v", err)
	}

	deadline := time.After(30 * time.Second)
	for {
		heard.mu.Lock()
		n := len(heard.got)
		heard.mu.Unlock()
		if n >= publishers*each {
			break
		}
		select {
		case <-heard.change:
		case <-deadline:
			t.Fatalf("b heard %d of %d events", n, publishers*each)
		}
	}
	heard.mu.Lock()
	defer heard.mu.Unlock()
	if len(heard.got) != publishers*each {
		t.Fatalf("b heard %d events, want %d", len(heard.got), publishers*each)
	}
	next := map[string]int{}
	for _, e := range heard.got {
		if e.Origin != "a" {
			t.Fatalf("event from %q, want a", e.Origin)
		}
		want := fmt.Sprint(next[e.NodeID])
		if e.Command.Reason != want {
			t.Fatalf("%s's events out of order: got %s, want %s", e.NodeID, e.Command.Reason, want)
		}
		next[e.NodeID]++
	}
	cancel()
	<-done
}

// A Publish after Close fails at once and says why.
func TestPublishAfterCloseFails(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	a, err := broadcast.OpenPostgres(t.Context(), url, "a", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a.Close() // twice is harmless
	err = a.Publish(t.Context(), broadcast.Event{Kind: broadcast.KindRevoked, NodeID: "n-1", At: time.Now()})
	if err == nil {
		t.Fatal("Publish after Close succeeded")
	}
	t.Log(err)
}

// The publisher's connection dies (a failover, an idle-connection reaper): the
// Publish that finds it dead fails and says so, and the next one goes out on a new
// connection.
func TestPublisherSurvivesItsConnectionDying(t *testing.T) {
	// A name of this test's own for the publishing pool's connections (the LISTEN
	// connection sets its own), so that the cut reaches no other test's.
	name := fmt.Sprintf("publisher-cut-%d", time.Now().UnixNano())
	url := pgtest.Fresh(t, pgtest.URL(t)) + "&application_name=" + name
	ctx := t.Context()
	a, err := broadcast.OpenPostgres(ctx, url, "a", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ev := broadcast.Event{Kind: broadcast.KindRevoked, NodeID: "n-1", At: time.Now()}
	if err := a.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, strings.Replace(url, name, "publisher-cut-admin", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var killed int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND pid <> pg_backend_pid()`, name).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("found no publishing connection to cut")
	}
	var failed int
	for range 3 {
		ev.At = time.Now()
		if err := a.Publish(ctx, ev); err != nil {
			failed++
			t.Logf("after the cut: %v", err)
			continue
		}
		if failed > 1 {
			t.Fatalf("%d publishes failed after the cut before one went out", failed)
		}
		return
	}
	t.Fatal("no publish went out after the publisher's connection was cut")
}
