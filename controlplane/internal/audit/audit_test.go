package audit_test

import (
	"errors"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/audit"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func entry(id int64, prev string) store.AuditEntry {
	e := store.AuditEntry{ID: id, At: time.Date(2031, 1, 2, 3, 4, 5, 6000, time.UTC), TenantID: "t1", Actor: "op:a", Action: "enroll",
		NodeID: "n1", Result: "ok", Details: map[string]string{"a": "1", "b": "2"}}
	return audit.Seal(e, prev)
}

// The hash depends on every shown field and on nothing else: not on map order or
// the time zone, and field boundaries cannot be shifted.
func TestHashCoversFieldsCanonically(t *testing.T) {
	base := entry(1, "")
	same := base
	same.At = base.At.In(time.FixedZone("x", 3600))
	same.Details = map[string]string{"b": "2", "a": "1"}
	if audit.Hash(same) != base.Hash {
		t.Fatal("hash depends on the time zone or the details' order")
	}
	for name, edit := range map[string]func(e *store.AuditEntry){
		"id":            func(e *store.AuditEntry) { e.ID++ },
		"at":            func(e *store.AuditEntry) { e.At = e.At.Add(time.Microsecond) },
		"tenant":        func(e *store.AuditEntry) { e.TenantID = "t2" },
		"actor/action":  func(e *store.AuditEntry) { e.Actor, e.Action = "op:ae", "nroll" },
		"node":          func(e *store.AuditEntry) { e.NodeID = "" },
		"result":        func(e *store.AuditEntry) { e.Result = "denied" },
		"detail value":  func(e *store.AuditEntry) { e.Details = map[string]string{"a": "1", "b": "3"} },
		"detail split":  func(e *store.AuditEntry) { e.Details = map[string]string{"a": "1b", "": "2"} },
		"detail added":  func(e *store.AuditEntry) { e.Details = map[string]string{"a": "1", "b": "2", "c": ""} },
		"prev_hash":     func(e *store.AuditEntry) { e.PrevHash = "00" },
		"details empty": func(e *store.AuditEntry) { e.Details = nil },
	} {
		e := base
		edit(&e)
		if audit.Hash(e) == base.Hash {
			t.Errorf("changing %s keeps the hash", name)
		}
	}
}

func TestChain(t *testing.T) {
	e1 := entry(1, "")
	e2 := entry(2, e1.Hash)
	e3 := entry(3, e2.Hash)
	check := func(es ...store.AuditEntry) *audit.Break {
		var c audit.Chain
		for _, e := range es {
			if err := c.Next(e); err != nil {
				var b *audit.Break
				if !errors.As(err, &b) {
					t.Fatalf("Next: %v is not a *Break", err)
				}
				return b
			}
		}
		return nil
	}
	if b := check(e1, e2, e3); b != nil {
		t.Fatalf("intact chain: %v", b)
	}
	edited := e2
	edited.Result = "denied"
	for name, tc := range map[string]struct {
		es  []store.AuditEntry
		bad int64
	}{
		"edited":         {[]store.AuditEntry{e1, edited, e3}, 2},
		"deleted":        {[]store.AuditEntry{e1, e3}, 3},
		"deleted oldest": {[]store.AuditEntry{e2, e3}, 2},
		"out of order":   {[]store.AuditEntry{e1, e3, e2}, 3},
		"rehashed edit":  {[]store.AuditEntry{e1, audit.Seal(edited, e1.Hash), e3}, 3},
	} {
		if b := check(tc.es...); b == nil || b.ID != tc.bad {
			t.Errorf("%s: break %v, want at %d", name, b, tc.bad)
		}
	}
}
