package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/edged/rotation"
	"google.golang.org/protobuf/types/known/durationpb"
)

var enrolled = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

// A 90d policy: the rotation lands between the window's start and the due time,
// for any draw.
func TestPlanInWindowBeforeDue(t *testing.T) {
	max := 90 * keyage.Day
	due := enrolled.Add(max)
	start := due.Add(-keyage.Window(max))
	for _, draw := range []float64{0, 0.25, 0.5, 0.999999} {
		p := planRotation(enrolled, max, enrolled.Add(time.Hour), draw)
		if !p.Due.Equal(due) || p.At.Before(start) || !p.At.Before(due) {
			t.Errorf("draw %v: at %v, want in [%v, %v)", draw, p.At, start, due)
		}
	}
	if p := planRotation(enrolled, 0, enrolled, 0.5); p.Max != 0 || !p.At.IsZero() {
		t.Errorf("no max: %+v", p)
	}
}

// 1,000 hosts enrolled in the same instant spread their rotations over the window:
// every tenth of the window gets some, none gets more than a fifth.
func TestPlanSpreadsAFleet(t *testing.T) {
	max := 90 * keyage.Day
	w := keyage.Window(max)
	start := enrolled.Add(max - w)
	rnd := rand.New(rand.NewPCG(1, 2))
	var buckets [10]int
	for range 1000 {
		p := planRotation(enrolled, max, enrolled, rnd.Float64())
		off := p.At.Sub(start)
		if off < 0 || off >= w {
			t.Fatalf("rotation at %v outside the window", p.At)
		}
		buckets[int(off*10/w)]++
	}
	for i, n := range buckets {
		if n == 0 || n > 200 {
			t.Errorf("tenth %d of the window holds %d of 1000 rotations: %v", i, n, buckets)
		}
	}
}

// A host that was off when its key fell due rotates soon after it starts (within
// lateSpread), not a window later.
func TestPlanAfterDue(t *testing.T) {
	max := 90 * keyage.Day
	now := enrolled.Add(max + 10*keyage.Day)
	for _, draw := range []float64{0, 0.5, 0.99} {
		p := planRotation(enrolled, max, now, draw)
		if p.At.Before(now) || p.At.After(now.Add(lateSpread)) {
			t.Errorf("draw %v: at %v, want within %v of %v", draw, p.At, lateSpread, now)
		}
	}
	// Started inside the window, after the drawn moment: still before the due time.
	now = enrolled.Add(max - time.Hour)
	if p := planRotation(enrolled, max, now, 0.99); p.At.Before(now) || !p.At.Before(p.Due) {
		t.Errorf("inside the window: at %v, now %v, due %v", p.At, now, p.Due)
	}
}

// testCadence runs a cadence in a synctest bubble with a fake rotation that makes a
// new key at the bubble's time, or fails while fail is set.
type testCadence struct {
	*cadence
	mu        sync.Mutex
	keyAt     time.Time
	rotations []time.Time
	fail      bool
	lastErr   string
}

func newTestCadence(local time.Duration) *testCadence {
	tc := &testCadence{keyAt: time.Now()}
	tc.cadence = &cadence{
		now:     time.Now,
		after:   time.After,
		jitter:  rand.New(rand.NewPCG(3, 4)).Float64,
		backoff: func(n int) time.Duration { return time.Duration(n) * time.Second },
		log:     slog.New(slog.DiscardHandler),
		local:   local,
		since: func() time.Time {
			tc.mu.Lock()
			defer tc.mu.Unlock()
			return tc.keyAt
		},
		key: func() string {
			tc.mu.Lock()
			defer tc.mu.Unlock()
			return tc.keyAt.String()
		},
		rotate: func(_ context.Context, key string) error {
			tc.mu.Lock()
			defer tc.mu.Unlock()
			if key != tc.keyAt.String() {
				return fmt.Errorf("%w: asked for %s", rotation.ErrKeyChanged, key)
			}
			if tc.fail {
				return errors.New("unavailable: the control plane cannot be reached")
			}
			tc.keyAt = time.Now()
			tc.rotations = append(tc.rotations, tc.keyAt)
			return nil
		},
		publish: func(_ cadencePlan, lastErr string) {
			tc.mu.Lock()
			tc.lastErr = lastErr
			tc.mu.Unlock()
		},
	}
	tc.init()
	return tc
}

func (tc *testCadence) count() int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return len(tc.rotations)
}

// rotated is a copy of the rotation times so far.
func (tc *testCadence) rotated() []time.Time {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return append([]time.Time(nil), tc.rotations...)
}

func TestCadencePolicyFromTheControlPlane(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tc := newTestCadence(0)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go tc.run(ctx)
		start := time.Now()

		// No max anywhere: nothing happens, however long.
		time.Sleep(1000 * time.Hour)
		synctest.Wait()
		if tc.count() != 0 {
			t.Fatal("rotated with no max key age")
		}

		// The Welcome names 90d: the key (made at start) rotates in its window.
		a := &Agent{cadence: tc.cadence}
		a.welcomePolicy(&edgev1.Welcome{MaxKeyAge: durationpb.New(90 * keyage.Day)})
		time.Sleep(90*keyage.Day - time.Since(start))
		synctest.Wait()
		if tc.count() != 1 {
			t.Fatalf("%d rotations by the due time, want 1", tc.count())
		}
		first := tc.rotated()[0]
		if age := first.Sub(start); age < 89*keyage.Day || age >= 90*keyage.Day {
			t.Errorf("rotated at key age %v, want in the last day before 90d", age)
		}

		// The policy changes to 1h on the connected daemon: the key is older than
		// that already, so it rotates soon (within lateSpread), not in 90 days; the
		// key after it rotates in its own 1h window.
		changed := time.Now()
		a.policyCommand(&edgev1.RotationPolicyCommand{MaxKeyAge: durationpb.New(time.Hour)})
		time.Sleep(lateSpread)
		synctest.Wait()
		if rs := tc.rotated(); len(rs) != 2 || rs[1].Sub(changed) > lateSpread {
			t.Fatalf("rotations %v after the policy became 1h at %v: want a second one within %v", rs, changed, lateSpread)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if tc.count() != 3 {
			t.Fatalf("%d rotations an hour later, want 3", tc.count())
		}
		if rs := tc.rotated(); rs[2].Sub(rs[1]) >= time.Hour || rs[2].Sub(rs[1]) < time.Hour-keyage.Window(time.Hour) {
			t.Errorf("third rotation at key age %v, want in the 1h key's window", rs[2].Sub(rs[1]))
		}

		// The policy is deleted (unset): no more rotations.
		a.policyCommand(&edgev1.RotationPolicyCommand{})
		time.Sleep(1000 * time.Hour)
		synctest.Wait()
		if tc.count() != 3 {
			t.Errorf("%d rotations after the policy was removed, want 3", tc.count())
		}
	})
}

// rotation.max_key_age smaller than the policy wins; larger loses.
func TestCadenceLocalSettingSmallerWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tc := newTestCadence(7 * keyage.Day)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go tc.run(ctx)
		start := time.Now()
		tc.setPolicy(90 * keyage.Day)
		time.Sleep(7 * keyage.Day)
		synctest.Wait()
		if rs := tc.rotated(); len(rs) != 1 || rs[0].Sub(start) >= 7*keyage.Day {
			t.Fatalf("rotations %v: want one before the local 7d", rs)
		}
		tc.setPolicy(2 * keyage.Day) // now the policy is smaller
		time.Sleep(2 * keyage.Day)
		synctest.Wait()
		if rs := tc.rotated(); len(rs) != 2 || rs[1].Sub(rs[0]) >= 2*keyage.Day {
			t.Fatalf("rotations %v: want a second one within the policy's 2d", rs)
		}
	})
}

// The control plane cannot be reached when the key falls due: the host is overdue,
// keeps its old key, retries with growing backoff, and rotates once it can.
func TestCadenceRetriesUntilReachable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tc := newTestCadence(time.Hour)
		tc.fail = true
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var mu sync.Mutex
		var attempts []time.Time
		rotate := tc.rotate
		tc.rotate = func(ctx context.Context, key string) error {
			mu.Lock()
			attempts = append(attempts, time.Now())
			mu.Unlock()
			return rotate(ctx, key)
		}
		go tc.run(ctx)
		start := time.Now()
		time.Sleep(time.Hour + 10*time.Second)
		synctest.Wait()
		mu.Lock()
		seen := append([]time.Time(nil), attempts...)
		mu.Unlock()
		if tc.count() != 0 || len(seen) < 3 {
			t.Fatalf("%d rotations, %d attempts: want attempts that all failed", tc.count(), len(seen))
		}
		for i := 2; i < len(seen); i++ {
			if seen[i].Sub(seen[i-1]) <= seen[i-1].Sub(seen[i-2]) {
				t.Errorf("attempt gaps do not grow: %v", seen)
			}
		}
		tc.mu.Lock()
		if tc.lastErr == "" || !tc.keyAt.Equal(start) {
			t.Errorf("after failures: last error %q, key made at %v (want the old key, from %v)", tc.lastErr, tc.keyAt, start)
		}
		tc.fail = false
		tc.mu.Unlock()
		time.Sleep(time.Minute)
		synctest.Wait()
		if tc.count() != 1 {
			t.Fatalf("%d rotations once reachable, want 1", tc.count())
		}
		tc.mu.Lock()
		defer tc.mu.Unlock()
		if tc.lastErr != "" {
			t.Errorf("the failure is still reported after a success: %q", tc.lastErr)
		}
	})
}

// The scheduler decides to rotate its overdue key, but another rotation replaces
// the key first (the stream's reconcile on reconnect held the state dir's lock):
// the routine rotation does nothing, the old failure stops being reported, and the
// new key is rotated in its own window, not at once (one due key, one rotation).
func TestCadenceKeyReplacedBeforeItsRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tc := newTestCadence(time.Hour)
		tc.fail = true
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var replacedAt time.Time
		replace := false
		rotate := tc.rotate
		tc.rotate = func(ctx context.Context, key string) error {
			tc.mu.Lock()
			if replace {
				replace = false
				tc.keyAt = time.Now()
				replacedAt = tc.keyAt
			}
			tc.mu.Unlock()
			return rotate(ctx, key)
		}
		go tc.run(ctx)
		time.Sleep(time.Hour + 10*time.Second)
		synctest.Wait()
		tc.mu.Lock()
		if tc.lastErr == "" {
			t.Fatal("no failure reported while unreachable")
		}
		tc.fail, replace = false, true
		tc.mu.Unlock()

		time.Sleep(time.Minute)
		synctest.Wait()
		tc.mu.Lock()
		if replacedAt.IsZero() {
			tc.mu.Unlock()
			t.Fatal("no attempt within a minute of the backoff")
		}
		if len(tc.rotations) != 0 || !tc.keyAt.Equal(replacedAt) {
			t.Errorf("rotations %v, key made at %v: the replaced key was rotated again (want the key from %v kept)", tc.rotations, tc.keyAt, replacedAt)
		}
		if tc.lastErr != "" {
			t.Errorf("the old key's failure is still reported for the new key: %q", tc.lastErr)
		}
		tc.mu.Unlock()

		time.Sleep(time.Hour)
		synctest.Wait()
		rs := tc.rotated()
		if len(rs) != 1 {
			t.Fatalf("%d rotations in the new key's first hour, want 1", len(rs))
		}
		if age := rs[0].Sub(replacedAt); age >= time.Hour || age < time.Hour-keyage.Window(time.Hour) {
			t.Errorf("the new key rotated at age %v, want in its 1h window", age)
		}
	})
}
