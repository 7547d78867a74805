package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func testNodeRotations(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, node := range []string{"n1", "n2", "n1"} {
		noErr(t, s.InsertRotation(ctx, store.Rotation{
			RotationID: fmt.Sprintf("rot-%d", i), NodeID: node, OldFingerprint: "SHA256:old", NewFingerprint: "SHA256:new",
			NewTokenJTI: fmt.Sprintf("jti-%d", i), NewToken: "t", At: at(time.Duration(10-i) * time.Second),
		}))
	}
	got, err := s.ListNodeRotations(ctx, "n1")
	noErr(t, err)
	if len(got) != 2 || got[0].RotationID != "rot-2" || got[1].RotationID != "rot-0" {
		t.Fatalf("ListNodeRotations(n1) = %+v, want rot-2 then rot-0 (oldest first)", got)
	}
	got, err = s.ListNodeRotations(ctx, "nobody")
	noErr(t, err)
	if got == nil || len(got) != 0 {
		t.Fatalf("ListNodeRotations(nobody) = %#v, want empty, not nil", got)
	}
}

// fleetRun returns a fully populated running run, so round-trips exercise every
// column.
func fleetRun(id, tenantID string, created time.Time) store.FleetRun {
	return store.FleetRun{
		ID: id, TenantID: tenantID, Action: "keys.rotate", Target: "tags=AnyOf(prod)",
		Spec: `{"mode":"rolling","batch":5}`, State: store.FleetRunRunning, CreatedBy: "op-1",
		CreatedAt: created,
	}
}

func fleetHosts(n int) []store.FleetRunHost {
	var hs []store.FleetRunHost
	for i := range n {
		hs = append(hs, store.FleetRunHost{
			NodeID: fmt.Sprintf("n%02d", i), Name: fmt.Sprintf("host-%02d", i), Wave: i/2 + 1, Position: i,
			State: store.FleetHostPending,
		})
	}
	return hs
}

func testFleetRunRoundTrip(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	mustTenant(t, s, "t2")
	r := fleetRun("fr-1", "t1", at(0))
	r.HaltedReason = "why not"
	r.CancelRequestedAt = at(time.Second)
	r.LeaseOwner, r.LeaseUntil = "replica-a", at(2*time.Second)
	noErr(t, s.InsertFleetRun(ctx, r))
	got, err := s.GetFleetRun(ctx, "fr-1")
	noErr(t, err)
	equal(t, "GetFleetRun", got, r)

	wantErr(t, s.InsertFleetRun(ctx, fleetRun("fr-1", "t2", at(0))), store.ErrConflict)
	wantErr(t, s.InsertFleetRun(ctx, fleetRun("fr-x", "no-such-tenant", at(0))), store.ErrNotFound)
	_, err = s.GetFleetRun(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)

	// Newest first, filtered by tenant and by state.
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-2", "t1", at(time.Minute))))
	r3 := fleetRun("fr-3", "t2", at(2*time.Minute))
	r3.State = store.FleetRunSucceeded
	noErr(t, s.InsertFleetRun(ctx, r3))
	ids := func(rs []store.FleetRun) []string {
		out := []string{}
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	all, err := s.ListFleetRuns(ctx, store.FleetRunFilter{})
	noErr(t, err)
	equal(t, "ListFleetRuns(all)", ids(all), []string{"fr-3", "fr-2", "fr-1"})
	t1, err := s.ListFleetRuns(ctx, store.FleetRunFilter{TenantID: "t1"})
	noErr(t, err)
	equal(t, "ListFleetRuns(t1)", ids(t1), []string{"fr-2", "fr-1"})
	running, err := s.ListFleetRuns(ctx, store.FleetRunFilter{State: store.FleetRunRunning})
	noErr(t, err)
	equal(t, "ListFleetRuns(running)", ids(running), []string{"fr-2", "fr-1"})
	none, err := s.ListFleetRuns(ctx, store.FleetRunFilter{TenantID: "t2", State: store.FleetRunRunning})
	noErr(t, err)
	if none == nil || len(none) != 0 {
		t.Fatalf("ListFleetRuns(t2, running) = %#v, want empty, not nil", none)
	}
}

func testFleetRunHosts(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))))
	hosts := fleetHosts(5)
	// Inserted out of plan order: listing is by position.
	noErr(t, s.InsertFleetRunHosts(ctx, "fr-1", []store.FleetRunHost{hosts[3], hosts[1], hosts[0], hosts[4], hosts[2]}))
	got, err := s.ListFleetRunHosts(ctx, "fr-1")
	noErr(t, err)
	want := fleetHosts(5)
	for i := range want {
		want[i].RunID = "fr-1"
	}
	equal(t, "ListFleetRunHosts", got, want)

	wantErr(t, s.InsertFleetRunHosts(ctx, "no-such-run", fleetHosts(1)), store.ErrNotFound)
	wantErr(t, s.InsertFleetRunHosts(ctx, "fr-1", fleetHosts(1)), store.ErrConflict)
	empty, err := s.ListFleetRunHosts(ctx, "no-such-run")
	noErr(t, err)
	if empty == nil || len(empty) != 0 {
		t.Fatalf("ListFleetRunHosts(no-such-run) = %#v, want empty, not nil", empty)
	}

	// The state compare-and-swap: pending -> running -> succeeded, every field
	// written; a second finish from running loses.
	h := want[2]
	h.State, h.StartedAt, h.StartKeyFingerprint, h.StartTokenJTI = store.FleetHostRunning, at(time.Second), "SHA256:old", "jti-1"
	noErr(t, s.UpdateFleetRunHost(ctx, h, store.FleetHostPending))
	h.State, h.Reason, h.Message, h.ExitCode, h.FinishedAt = store.FleetHostFailed, "exit_code", "failed (exit 3)", 3, at(2*time.Second)
	noErr(t, s.UpdateFleetRunHost(ctx, h, store.FleetHostRunning))
	again := h
	again.State = store.FleetHostSucceeded
	wantErr(t, s.UpdateFleetRunHost(ctx, again, store.FleetHostRunning), store.ErrConflict)
	ghost := h
	ghost.NodeID = "n-ghost"
	wantErr(t, s.UpdateFleetRunHost(ctx, ghost, store.FleetHostPending), store.ErrNotFound)
	got, err = s.ListFleetRunHosts(ctx, "fr-1")
	noErr(t, err)
	equal(t, "host after updates", got[2], h)
	equal(t, "other host untouched", got[3], want[3])
}

func testFleetRunFinishAndCancel(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))))
	noErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "a", at(0), at(time.Minute)))

	// The first cancel's time wins.
	noErr(t, s.RequestFleetRunCancel(ctx, "fr-1", at(time.Second)))
	noErr(t, s.RequestFleetRunCancel(ctx, "fr-1", at(2*time.Second)))
	r, err := s.GetFleetRun(ctx, "fr-1")
	noErr(t, err)
	equal(t, "cancel_requested_at", r.CancelRequestedAt, at(time.Second))

	noErr(t, s.FinishFleetRun(ctx, "fr-1", store.FleetRunCancelled, "cancelled", at(3*time.Second)))
	r, err = s.GetFleetRun(ctx, "fr-1")
	noErr(t, err)
	if r.State != store.FleetRunCancelled || r.HaltedReason != "cancelled" || !r.FinishedAt.Equal(at(3*time.Second)) {
		t.Fatalf("finished run = %+v", r)
	}
	if r.LeaseOwner != "" || !r.LeaseUntil.IsZero() {
		t.Fatalf("a finished run keeps its lease: %q until %s", r.LeaseOwner, r.LeaseUntil)
	}
	wantErr(t, s.FinishFleetRun(ctx, "fr-1", store.FleetRunSucceeded, "", at(4*time.Second)), store.ErrConflict)
	wantErr(t, s.RequestFleetRunCancel(ctx, "fr-1", at(4*time.Second)), store.ErrConflict)
	wantErr(t, s.FinishFleetRun(ctx, "nope", store.FleetRunSucceeded, "", at(0)), store.ErrNotFound)
	wantErr(t, s.RequestFleetRunCancel(ctx, "nope", at(0)), store.ErrNotFound)
}

func testFleetRunLease(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))))

	noErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "a", at(0), at(10*time.Second)))
	// Another replica cannot take a live lease; its owner renews it.
	wantErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "b", at(5*time.Second), at(15*time.Second)), store.ErrConflict)
	noErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "a", at(5*time.Second), at(15*time.Second)))
	r, err := s.GetFleetRun(ctx, "fr-1")
	noErr(t, err)
	if r.LeaseOwner != "a" || !r.LeaseUntil.Equal(at(15*time.Second)) {
		t.Fatalf("lease = %q until %s, want a until %s", r.LeaseOwner, r.LeaseUntil, at(15*time.Second))
	}
	// Expired at now: anyone may take it.
	noErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "b", at(15*time.Second), at(25*time.Second)))
	// Release by a non-owner does nothing; by the owner frees it.
	noErr(t, s.ReleaseFleetRunLease(ctx, "fr-1", "a"))
	wantErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "a", at(16*time.Second), at(26*time.Second)), store.ErrConflict)
	noErr(t, s.ReleaseFleetRunLease(ctx, "fr-1", "b"))
	noErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "a", at(16*time.Second), at(26*time.Second)))

	wantErr(t, s.AcquireFleetRunLease(ctx, "nope", "a", at(0), at(1)), store.ErrNotFound)
	noErr(t, s.FinishFleetRun(ctx, "fr-1", store.FleetRunSucceeded, "", at(30*time.Second)))
	wantErr(t, s.AcquireFleetRunLease(ctx, "fr-1", "a", at(31*time.Second), at(40*time.Second)), store.ErrConflict)
}

func testFleetRunEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))))
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-2", "t1", at(0))))
	var want []store.FleetRunEvent
	for i, kind := range []string{"run_started", "wave_started", "host_result", "run_finished"} {
		e, err := s.AppendFleetRunEvent(ctx, store.FleetRunEvent{RunID: "fr-1", At: at(time.Duration(i) * time.Second), Kind: kind, Data: fmt.Sprintf(`{"i":%d}`, i)})
		noErr(t, err)
		if e.Sequence != uint64(i+1) {
			t.Fatalf("event %d numbered %d, want %d", i, e.Sequence, i+1)
		}
		want = append(want, e)
	}
	// Numbering is per run.
	other, err := s.AppendFleetRunEvent(ctx, store.FleetRunEvent{RunID: "fr-2", Kind: "run_started", Data: "{}"})
	noErr(t, err)
	if other.Sequence != 1 || other.At.IsZero() {
		t.Fatalf("first event of fr-2 = %+v, want sequence 1 and a time", other)
	}
	_, err = s.AppendFleetRunEvent(ctx, store.FleetRunEvent{RunID: "nope", Kind: "x", Data: "{}"})
	wantErr(t, err, store.ErrNotFound)

	got, err := s.ListFleetRunEvents(ctx, "fr-1", 0)
	noErr(t, err)
	equal(t, "ListFleetRunEvents(0)", got, want)
	got, err = s.ListFleetRunEvents(ctx, "fr-1", 2)
	noErr(t, err)
	equal(t, "ListFleetRunEvents(2)", got, want[2:])
	got, err = s.ListFleetRunEvents(ctx, "fr-1", 4)
	noErr(t, err)
	if got == nil || len(got) != 0 {
		t.Fatalf("ListFleetRunEvents after the last = %#v, want empty, not nil", got)
	}
}

// A run, its hosts and its first event are written together or not at all.
func testFleetRunStartInOneTx(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	errAbort := errors.New("abort")
	err := s.InTx(ctx, func(tx store.Tx) error {
		if err := tx.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))); err != nil {
			return err
		}
		if err := tx.InsertFleetRunHosts(ctx, "fr-1", fleetHosts(3)); err != nil {
			return err
		}
		if _, err := tx.AppendFleetRunEvent(ctx, store.FleetRunEvent{RunID: "fr-1", Kind: "run_started", Data: "{}"}); err != nil {
			return err
		}
		return errAbort
	})
	wantErr(t, err, errAbort)
	_, err = s.GetFleetRun(ctx, "fr-1")
	wantErr(t, err, store.ErrNotFound)
	hs, err := s.ListFleetRunHosts(ctx, "fr-1")
	noErr(t, err)
	es, err := s.ListFleetRunEvents(ctx, "fr-1", 0)
	noErr(t, err)
	if len(hs) != 0 || len(es) != 0 {
		t.Fatalf("rolled back start left %d hosts and %d events", len(hs), len(es))
	}

	noErr(t, s.InTx(ctx, func(tx store.Tx) error {
		if err := tx.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))); err != nil {
			return err
		}
		if err := tx.InsertFleetRunHosts(ctx, "fr-1", fleetHosts(3)); err != nil {
			return err
		}
		_, err := tx.AppendFleetRunEvent(ctx, store.FleetRunEvent{RunID: "fr-1", Kind: "run_started", Data: "{}"})
		return err
	}))
	hs, err = s.ListFleetRunHosts(ctx, "fr-1")
	noErr(t, err)
	es, err = s.ListFleetRunEvents(ctx, "fr-1", 0)
	noErr(t, err)
	if len(hs) != 3 || len(es) != 1 {
		t.Fatalf("committed start has %d hosts and %d events, want 3 and 1", len(hs), len(es))
	}
}

// Appenders racing on one run each get a distinct number, with no gaps.
func testConcurrentFleetRunEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))))
	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			_, errs[i] = s.AppendFleetRunEvent(ctx, store.FleetRunEvent{RunID: "fr-1", Kind: "host_result", Data: fmt.Sprintf(`{"i":%d}`, i)})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("append %d: %v", i, err)
		}
	}
	es, err := s.ListFleetRunEvents(ctx, "fr-1", 0)
	noErr(t, err)
	if len(es) != racers {
		t.Fatalf("%d events stored, want %d", len(es), racers)
	}
	for i, e := range es {
		if e.Sequence != uint64(i+1) {
			t.Fatalf("event %d numbered %d: numbers must run 1..%d without gaps", i, e.Sequence, racers)
		}
	}
}

// finishers is how many hosts finish at once in testConcurrentFleetFinishers: a whole
// wave of a parallel run, each host's goroutine recording its result.
const finishers = 300

// Hundreds of hosts of one run finish at once, each recording its state and its
// host_result event in one transaction (as the fleet driver does), while a watcher
// pages through the events. Every host's result is stored exactly once, numbered
// 1..N without gaps, and the watcher, which only ever asks for "after the last
// sequence I saw", misses none: numbers become visible in order.
func testConcurrentFleetFinishers(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	noErr(t, s.InsertFleetRun(ctx, fleetRun("fr-1", "t1", at(0))))
	hosts := fleetHosts(finishers)
	noErr(t, s.InsertFleetRunHosts(ctx, "fr-1", hosts))

	watched := make(chan []store.FleetRunEvent, 1)
	stopWatch := make(chan struct{})
	go func() {
		var seen []store.FleetRunEvent
		var last uint64
		for {
			select {
			case <-stopWatch:
				// One last page after every writer has returned.
				es, _ := s.ListFleetRunEvents(ctx, "fr-1", last)
				watched <- append(seen, es...)
				return
			default:
			}
			es, err := s.ListFleetRunEvents(ctx, "fr-1", last)
			if err != nil {
				watched <- nil
				return
			}
			if n := len(es); n > 0 {
				seen, last = append(seen, es...), es[n-1].Sequence
			}
		}
	}()

	errs := make([]error, finishers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() {
			<-start
			h.RunID, h.State, h.FinishedAt = "fr-1", store.FleetHostSucceeded, at(time.Second)
			errs[i] = s.InTx(ctx, func(tx store.Tx) error {
				if err := tx.UpdateFleetRunHost(ctx, h, store.FleetHostPending); err != nil {
					return err
				}
				_, err := tx.AppendFleetRunEvent(ctx, store.FleetRunEvent{RunID: "fr-1", Kind: "host_result", Data: fmt.Sprintf(`{"node":%q}`, h.NodeID)})
				return err
			})
		})
	}
	close(start)
	wg.Wait()
	close(stopWatch)
	for i, err := range errs {
		if err != nil {
			t.Errorf("host %d: result lost: %v", i, err)
		}
	}
	es, err := s.ListFleetRunEvents(ctx, "fr-1", 0)
	noErr(t, err)
	if len(es) != finishers {
		t.Fatalf("%d events stored, want %d", len(es), finishers)
	}
	perHost := map[string]int{}
	for i, e := range es {
		if e.Sequence != uint64(i+1) {
			t.Fatalf("event %d numbered %d: numbers must run 1..%d without gaps", i, e.Sequence, finishers)
		}
		perHost[e.Data]++
	}
	for _, h := range hosts {
		if n := perHost[fmt.Sprintf(`{"node":%q}`, h.NodeID)]; n != 1 {
			t.Errorf("host %s has %d result events, want 1", h.NodeID, n)
		}
	}
	stored, err := s.ListFleetRunHosts(ctx, "fr-1")
	noErr(t, err)
	for _, h := range stored {
		if h.State != store.FleetHostSucceeded {
			t.Errorf("host %s is %s, want succeeded", h.NodeID, h.State)
		}
	}
	seen := <-watched
	if len(seen) != finishers {
		t.Fatalf("the watcher saw %d events, want %d: paging by sequence skipped events that committed late", len(seen), finishers)
	}
	for i, e := range seen {
		if e.Sequence != uint64(i+1) {
			t.Fatalf("the watcher's event %d is number %d: events became visible out of order", i, e.Sequence)
		}
	}
}
