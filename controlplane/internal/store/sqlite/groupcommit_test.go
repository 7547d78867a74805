package sqlite_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
)

func tenant(id string) store.Tenant {
	return store.Tenant{ID: id, Name: "tenant " + id, Kind: store.TenantTeam, CreatedAt: time.Unix(1_900_000_000, 0).UTC()}
}

// lineUp holds the writer in one transaction until n more callers queue behind it,
// then lets it go; it returns the first transaction's error.
func lineUp(t *testing.T, s *sqlite.Store, n int, queue func()) error {
	t.Helper()
	entered := make(chan struct{})
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.InTx(t.Context(), func(tx store.Tx) error {
			close(entered)
			<-release
			return tx.CreateTenant(t.Context(), tenant("first"))
		})
	}()
	<-entered
	queue()
	for s.Queued() < n {
		select {
		case <-t.Context().Done():
			t.Fatalf("only %d of %d callers queued", s.Queued(), n)
		case <-time.After(time.Millisecond):
		}
	}
	close(release)
	return <-first
}

// Transactions that queue for the writer share one commit (one fsync), and each
// returns only once that commit is done.
func TestQueuedTransactionsShareOneCommit(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "aegis.db"))
	const n = 50
	before := s.Commits()
	errs := make([]error, n)
	var wg sync.WaitGroup
	err := lineUp(t, s, n, func() {
		for i := range n {
			wg.Go(func() {
				errs[i] = s.InTx(t.Context(), func(tx store.Tx) error {
					return tx.CreateTenant(t.Context(), tenant(fmt.Sprintf("t%d", i)))
				})
				if errs[i] == nil {
					// Durable and visible to other connections once InTx returns.
					_, errs[i] = s.GetTenant(t.Context(), fmt.Sprintf("t%d", i))
				}
			})
		}
	})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
	}
	if got := s.Commits() - before; got != 1 {
		t.Fatalf("%d transactions made %d commits, want 1 (they were all queued together)", n+1, got)
	}
}

// A member of a batch that fails, or panics, is rolled back alone: the others'
// work commits, and the failing one gets its own error back unchanged.
func TestFailedMemberOfABatchIsRolledBackAlone(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "aegis.db"))
	boom := errors.New("boom")
	var failed, panicked, ok error
	var recovered any
	var wg sync.WaitGroup
	err := lineUp(t, s, 3, func() {
		wg.Go(func() {
			failed = s.InTx(t.Context(), func(tx store.Tx) error {
				if err := tx.CreateTenant(t.Context(), tenant("failed")); err != nil {
					return err
				}
				return boom
			})
		})
		wg.Go(func() {
			defer func() { recovered = recover() }()
			panicked = s.InTx(t.Context(), func(tx store.Tx) error {
				if err := tx.CreateTenant(t.Context(), tenant("panicked")); err != nil {
					return err
				}
				panic("member panics")
			})
		})
		wg.Go(func() {
			ok = s.InTx(t.Context(), func(tx store.Tx) error { return tx.CreateTenant(t.Context(), tenant("ok")) })
		})
	})
	wg.Wait()
	if err != nil || ok != nil {
		t.Fatalf("the good members failed: %v, %v", err, ok)
	}
	if failed != boom {
		t.Fatalf("failing member got %v, want its own error unchanged", failed)
	}
	if recovered == nil || panicked != nil {
		t.Fatalf("panicking member: recovered %v, returned %v; want the panic to reach its caller", recovered, panicked)
	}
	for id, want := range map[string]bool{"first": true, "ok": true, "failed": false, "panicked": false} {
		_, err := s.GetTenant(t.Context(), id)
		if got := err == nil; got != want {
			t.Errorf("tenant %s stored = %v, want %v (err %v)", id, got, want, err)
		}
	}
}
