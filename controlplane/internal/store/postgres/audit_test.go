package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/audit"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
)

// An audited transaction that is still open (a rotation in the middle of its work)
// must not hold back another audited transaction's commit: the chain takes no lock
// across a caller's commit. Both entries still end up on one unbroken chain.
func TestAuditedTransactionsDoNotWaitForEachOther(t *testing.T) {
	s := open(t, pgtest.Fresh(t, pgtest.URL(t)))
	ctx := t.Context()

	appended := make(chan struct{})
	release := make(chan struct{})
	slow := make(chan error, 1)
	go func() {
		slow <- s.InTx(ctx, func(tx store.Tx) error {
			if _, err := tx.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "node:slow", Action: "rotate", NodeID: "slow", Result: "ok"}); err != nil {
				return err
			}
			close(appended)
			<-release
			return nil
		})
	}()
	<-appended

	// A hang guard, not a timing assertion: with a lock held from the append to
	// the commit, this commit waits until the slow one ends, which is never.
	fast, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := s.InTx(fast, func(tx store.Tx) error {
		_, err := tx.AppendAudit(fast, store.AuditEntry{TenantID: "t1", Actor: "node:fast", Action: "rotate", NodeID: "fast", Result: "ok"})
		return err
	})
	if err != nil {
		close(release)
		t.Fatalf("an audited commit waited for another open audited transaction: %v", err)
	}
	// Sealed and listed while the slow transaction is still open.
	list, err := s.ListAudit(ctx, "", 0, 0)
	if err != nil || len(list) != 1 || list[0].NodeID != "fast" {
		close(release)
		t.Fatalf("ListAudit while the slow transaction is open = %v, %v; want the fast entry alone", list, err)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	r, err := audit.Verify(ctx, s)
	if err != nil || r.Break != nil || r.Checked != 2 {
		t.Fatalf("Verify = %+v, %v; want 2 entries, unbroken", r, err)
	}
}

// An entry committed by a process that died before sealing it (it stays pending)
// is sealed by the next store's background sealer, without any reader asking.
func TestPendingEntriesAreSealedInTheBackground(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	s := open(t, url)
	ctx := t.Context()
	if err := s.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "system", Action: "enroll", NodeID: "n1", Result: "ok"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for {
		// Read inside a transaction: it does not seal, it only sees sealed entries.
		var n int
		err := s.InTx(ctx, func(tx store.Tx) error {
			list, err := tx.ListAudit(ctx, "", 0, 0)
			n = len(list)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("the committed entry was never sealed")
		case <-time.After(20 * time.Millisecond):
		}
	}
}
