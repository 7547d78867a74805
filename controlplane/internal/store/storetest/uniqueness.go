package storetest

import (
	"sync"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// testUniqueness pins the uniqueness rules the schema enforces itself, so that two
// transactions that both checked first cannot both insert.
func testUniqueness(t *testing.T, s store.Store) {
	ctx := t.Context()

	t.Run("tenant names", func(t *testing.T) {
		a := store.Tenant{ID: "t-aaaa", Name: "Blue", Kind: store.TenantTeam, CreatedAt: t0}
		noErr(t, s.CreateTenant(ctx, a))
		wantErr(t, s.CreateTenant(ctx, store.Tenant{ID: "t-bbbb", Name: "Blue", Kind: store.TenantPersonal, CreatedAt: t0}), store.ErrConflict)
		_, err := s.GetTenant(ctx, "t-bbbb")
		wantErr(t, err, store.ErrNotFound)

		// Racers that each looked the name up inside their own transaction and
		// found it free: exactly one commits.
		const racers = 8
		var wg sync.WaitGroup
		errs := make([]error, racers)
		start := make(chan struct{})
		for i := range racers {
			wg.Go(func() {
				<-start
				errs[i] = s.InTx(ctx, func(tx store.Tx) error {
					all, err := tx.ListTenants(ctx)
					if err != nil {
						return err
					}
					for _, o := range all {
						if o.Name == "Green" {
							return store.ErrConflict
						}
					}
					return tx.CreateTenant(ctx, store.Tenant{ID: "t-g" + string(rune('a'+i)), Name: "Green", Kind: store.TenantTeam, CreatedAt: at(time.Duration(i))})
				})
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			}
		}
		list, err := s.ListTenants(ctx)
		noErr(t, err)
		named := 0
		for _, o := range list {
			if o.Name == "Green" {
				named++
			}
		}
		if won != 1 || named != 1 {
			t.Fatalf("%d of %d concurrent creates of one tenant name committed, %d tenants hold it; want exactly 1 (errors %v)", won, racers, named, errs)
		}
	})

	t.Run("a rotation's token", func(t *testing.T) {
		r := store.Rotation{RotationID: "rot-u1", NodeID: "n1", OldFingerprint: "SHA256:a", NewFingerprint: "SHA256:b",
			NewTokenJTI: "jti-u", NewToken: "h.c.s", At: t0}
		noErr(t, s.InsertRotation(ctx, r))
		r2 := r
		r2.RotationID, r2.NodeID = "rot-u2", "n2"
		wantErr(t, s.InsertRotation(ctx, r2), store.ErrConflict)
		_, err := s.GetRotation(ctx, "rot-u2")
		wantErr(t, err, store.ErrNotFound)
	})

	t.Run("a fleet host's place in the plan", func(t *testing.T) {
		mustTenant(t, s, "tu")
		noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-u", "tu", t0)))
		hs := fleetHosts(2)
		hs[1].Position = hs[0].Position
		// As the fleet engine does: hosts go in inside the run's transaction, which a
		// conflict rolls back whole.
		wantErr(t, s.InTx(ctx, func(tx store.Tx) error { return tx.InsertFleetRunHosts(ctx, "fr-u", hs) }), store.ErrConflict)
		got, err := s.ListFleetRunHosts(ctx, "fr-u")
		noErr(t, err)
		if len(got) != 0 {
			t.Fatalf("a refused InsertFleetRunHosts left %d hosts", len(got))
		}
	})
}
