package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/audit"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func verifyIntact(t *testing.T, s store.Tx, want int64) {
	t.Helper()
	r, err := audit.Verify(t.Context(), s)
	noErr(t, err)
	if r.Break != nil {
		t.Fatalf("audit chain broken: %v", r.Break)
	}
	equal(t, "entries checked", r.Checked, want)
}

// Each entry links to the one before and hashes what it shows; whatever PrevHash or
// Hash a caller passes is replaced.
func testAuditChain(t *testing.T, s store.Store) {
	ctx := t.Context()
	verifyIntact(t, s, 0)
	e1, err := s.AppendAudit(ctx, store.AuditEntry{At: at(0), TenantID: "t1", Actor: "system", Action: "enroll", NodeID: "n1", Result: "ok", PrevHash: "forged", Hash: "forged"})
	noErr(t, err)
	equal(t, "first PrevHash", e1.PrevHash, "")
	equal(t, "first Hash", e1.Hash, audit.Hash(e1))
	// Inside a transaction the entry may join the chain only after the commit
	// (PostgreSQL seals it then): read it back as the Store lists it.
	noErr(t, s.InTx(ctx, func(tx store.Tx) error {
		_, err = tx.AppendAudit(ctx, store.AuditEntry{At: at(time.Second), TenantID: "t2", Actor: "op:x", Action: "revoke", NodeID: "n2", Result: "ok",
			Details: map[string]string{"b": "2", "a": "1"}})
		return err
	}))
	all, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	equal(t, "entries after the second append", len(all), 2)
	e2 := all[1]
	equal(t, "second entry", e2.Actor+" "+e2.Action+" "+e2.Details["a"]+e2.Details["b"], "op:x revoke 12")
	equal(t, "second PrevHash", e2.PrevHash, e1.Hash)
	equal(t, "second Hash", e2.Hash, audit.Hash(e2))
	equal(t, "second ID", e2.ID, e1.ID+1)

	// A rolled-back append leaves no trace in the chain.
	noErr(t, func() error {
		err := s.InTx(ctx, func(tx store.Tx) error {
			if _, err := tx.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "system", Action: "x", Result: "ok"}); err != nil {
				return err
			}
			return errRollback
		})
		if err != errRollback {
			return fmt.Errorf("InTx = %v, want the rollback sentinel", err)
		}
		return nil
	}())
	e3, err := s.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "node:n1", Action: "rotate", NodeID: "n1", Result: "ok"})
	noErr(t, err)
	equal(t, "PrevHash after a rollback", e3.PrevHash, e2.Hash)
	verifyIntact(t, s, 3)

	list, err := s.ListNodeAudit(ctx, "", "n1", 0, 0)
	noErr(t, err)
	equal(t, "ListNodeAudit(n1)", list, []store.AuditEntry{e1, e3})
	list, err = s.ListNodeAudit(ctx, "t2", "n1", 0, 0)
	noErr(t, err)
	equal(t, "ListNodeAudit(t2, n1) length", len(list), 0)
	list, err = s.ListNodeAudit(ctx, "t1", "n1", e1.ID, 1)
	noErr(t, err)
	equal(t, "ListNodeAudit(t1, n1, after e1, limit 1)", list, []store.AuditEntry{e3})
}

var errRollback = fmt.Errorf("roll back")

// Appenders racing, inside transactions and outside, still make one unbroken chain
// with no id used twice.
func testConcurrentAuditChain(t *testing.T, s store.Store) {
	ctx := t.Context()
	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			e := store.AuditEntry{TenantID: "t1", Actor: "system", Action: "race", NodeID: fmt.Sprintf("n%d", i), Result: "ok"}
			if i%2 == 0 {
				_, errs[i] = s.AppendAudit(ctx, e)
				return
			}
			errs[i] = s.InTx(ctx, func(tx store.Tx) error {
				// Two entries in one transaction stay adjacent in the chain.
				if _, err := tx.AppendAudit(ctx, e); err != nil {
					return err
				}
				e.Action = "race.second"
				_, err := tx.AppendAudit(ctx, e)
				return err
			})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("appender %d: %v", i, err)
		}
	}
	want := int64(racers + racers/2)
	verifyIntact(t, s, want)
	list, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	for i, e := range list {
		if e.Action == "race.second" && (i == 0 || list[i-1].NodeID != e.NodeID) {
			t.Fatalf("entry %d: a transaction's two entries were split by another appender", e.ID)
		}
	}
}

// Tamper is raw SQL on a store's database, behind the store's back, as an attacker
// with database access would run it. Statements take no parameters.
type Tamper func(t *testing.T, query string)

// RunAuditTamper checks that audit.Verify finds rows edited, deleted or reordered
// with SQL. open must return a fresh store and a Tamper on its database.
func RunAuditTamper(t *testing.T, open func(t *testing.T) (store.Store, Tamper)) {
	tests := []struct {
		name    string
		sql     []string
		wantBad int64
	}{
		{"edited", []string{`UPDATE audit_log SET result = 'denied' WHERE id = 3`}, 3},
		{"edited details", []string{`UPDATE audit_log SET details = '{"old_fingerprint":"SHA256:forged"}' WHERE id = 2`}, 2},
		{"deleted", []string{`DELETE FROM audit_log WHERE id = 3`}, 4},
		{"deleted oldest", []string{`DELETE FROM audit_log WHERE id = 1`}, 2},
		{"reordered", []string{
			`UPDATE audit_log SET id = -id WHERE id IN (2, 3)`,
			`UPDATE audit_log SET id = 3 WHERE id = -2`,
			`UPDATE audit_log SET id = 2 WHERE id = -3`,
		}, 2},
		{"hash overwritten", []string{`UPDATE audit_log SET hash = prev_hash WHERE id = 4`}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, tamper := open(t)
			ctx := t.Context()
			for i := range 5 {
				_, err := s.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "op:a", Action: "enroll", NodeID: fmt.Sprintf("n%d", i), Result: "ok",
					Details: map[string]string{"old_fingerprint": "SHA256:x"}})
				noErr(t, err)
			}
			verifyIntact(t, s, 5)
			for _, q := range tc.sql {
				tamper(t, q)
			}
			r, err := audit.Verify(ctx, s)
			noErr(t, err)
			if r.Break == nil {
				t.Fatalf("Verify after %q: chain intact (%d entries), want a break at %d", tc.sql, r.Checked, tc.wantBad)
			}
			equal(t, "first bad id", r.Break.ID, tc.wantBad)
			t.Logf("%s: %v", tc.name, r.Break)
		})
	}
}
