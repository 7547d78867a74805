package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func testRotationPolicies(t *testing.T, s store.Store) {
	ctx := context.Background()
	mustTenant(t, s, "t1")
	mustTenant(t, s, "t2")

	p := store.RotationPolicy{TenantID: "t1", Name: "prod", Target: "tags=AnyOf(prod)", MaxKeyAge: 90 * 24 * time.Hour,
		CreatedAt: at(0), UpdatedAt: at(0), UpdatedBy: "op:a"}
	noErr(t, s.PutRotationPolicy(ctx, p))
	got, err := s.GetRotationPolicy(ctx, "t1", "prod")
	noErr(t, err)
	equal(t, "round trip", got, p)

	// Replacing keeps created_at and changes the rest.
	p2 := p
	p2.Target, p2.MaxKeyAge, p2.CreatedAt, p2.UpdatedAt, p2.UpdatedBy = "all", 15*time.Second+250*time.Millisecond, at(time.Hour), at(time.Hour), "op:b"
	noErr(t, s.PutRotationPolicy(ctx, p2))
	got, err = s.GetRotationPolicy(ctx, "t1", "prod")
	noErr(t, err)
	want := p2
	want.CreatedAt = p.CreatedAt
	equal(t, "replaced", got, want)

	// The same name in another tenant is another policy; lists are tenant-scoped.
	other := store.RotationPolicy{TenantID: "t2", Name: "prod", Target: "all", MaxKeyAge: time.Hour, CreatedAt: at(0), UpdatedAt: at(0)}
	noErr(t, s.PutRotationPolicy(ctx, other))
	noErr(t, s.PutRotationPolicy(ctx, store.RotationPolicy{TenantID: "t1", Name: "a-first", Target: "all", MaxKeyAge: time.Hour, CreatedAt: at(0), UpdatedAt: at(0)}))
	list, err := s.ListRotationPolicies(ctx, "t1")
	noErr(t, err)
	if len(list) != 2 || list[0].Name != "a-first" || list[1].Name != "prod" || list[1].TenantID != "t1" {
		t.Fatalf("t1's policies: %+v", list)
	}
	all, err := s.ListRotationPolicies(ctx, "")
	noErr(t, err)
	equal(t, "every tenant's policies", len(all), 3)

	_, err = s.GetRotationPolicy(ctx, "t2", "a-first")
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.DeleteRotationPolicy(ctx, "t2", "a-first"), store.ErrNotFound)
	noErr(t, s.DeleteRotationPolicy(ctx, "t1", "prod"))
	wantErr(t, s.DeleteRotationPolicy(ctx, "t1", "prod"), store.ErrNotFound)
	got, err = s.GetRotationPolicy(ctx, "t2", "prod")
	noErr(t, err)
	equal(t, "the other tenant's policy survives", got.Target, "all")

	wantErr(t, s.PutRotationPolicy(ctx, store.RotationPolicy{TenantID: "nope", Name: "x", Target: "all", MaxKeyAge: time.Hour}), store.ErrNotFound)

	// Inside a transaction that rolls back, nothing stays.
	_ = s.InTx(ctx, func(tx store.Tx) error {
		noErr(t, tx.PutRotationPolicy(ctx, store.RotationPolicy{TenantID: "t1", Name: "rolled-back", Target: "all", MaxKeyAge: time.Hour}))
		return store.ErrConflict
	})
	_, err = s.GetRotationPolicy(ctx, "t1", "rolled-back")
	wantErr(t, err, store.ErrNotFound)
}

// A host's own maximum key age, from its Hello: set, read back (get and list) at
// millisecond precision, kept when the session closes, cleared with 0.
func testLocalMaxKeyAge(t *testing.T, s store.Store) {
	ctx := context.Background()
	mustTenant(t, s, "t1")
	mustDaemon(t, s, daemon("n1", "t1"))
	equal(t, "unreported", getDaemon(t, s, "n1").LocalMaxKeyAge, time.Duration(0))
	noErr(t, s.InTx(ctx, func(tx store.Tx) error {
		if err := tx.OpenSession(ctx, "n1", "s1", "r1", at(0)); err != nil {
			return err
		}
		return tx.SetDaemonLocalMaxKeyAge(ctx, "n1", time.Hour+1500*time.Millisecond)
	}))
	equal(t, "reported", getDaemon(t, s, "n1").LocalMaxKeyAge, time.Hour+1500*time.Millisecond)
	noErr(t, s.CloseSession(ctx, "n1", "s1"))
	ds, err := s.ListDaemons(ctx, store.DaemonFilter{TenantID: "t1"})
	noErr(t, err)
	equal(t, "listed after the session closed", ds[0].LocalMaxKeyAge, time.Hour+1500*time.Millisecond)
	noErr(t, s.SetDaemonLocalMaxKeyAge(ctx, "n1", 0))
	equal(t, "cleared", getDaemon(t, s, "n1").LocalMaxKeyAge, time.Duration(0))
	wantErr(t, s.SetDaemonLocalMaxKeyAge(ctx, "nope", time.Hour), store.ErrNotFound)
}
