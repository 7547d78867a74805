package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func TestTakeSaysWhenTheBucketRefills(t *testing.T) {
	l := New(2, 1) // 2/s, burst 1
	if ok, _ := l.Take("a", t0); !ok {
		t.Fatal("first call refused")
	}
	ok, wait := l.Take("a", t0)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("second call: ok=%v retry_after=%s, want refused with 500ms", ok, wait)
	}
	if ok, _ := l.Take("a", t0.Add(wait)); !ok {
		t.Fatal("refused again at the retry-after it was given")
	}
	if ok, _ := l.Take("b", t0); !ok {
		t.Fatal("another key shares the bucket")
	}
}

// 10,000 streams arriving in the same instant: each makes at most two attempts,
// coming back when told to, and the last is admitted N/rate later.
func TestAdmissionTurnsAStormIntoAQueue(t *testing.T) {
	const n, rate, burst = 10000, 300, 300
	a := NewAdmission(rate, burst)
	type ret struct {
		key string
		at  time.Time
	}
	var back []ret // in arrival order, which is slot order
	admitted := 0
	for i := range n {
		k := fmt.Sprintf("n-%012x", i)
		ok, wait := a.Admit(k, t0)
		if ok {
			admitted++
			continue
		}
		back = append(back, ret{k, t0.Add(wait)})
	}
	if admitted != burst {
		t.Fatalf("admitted %d at once, want the burst %d", admitted, burst)
	}
	last := t0
	for _, r := range back {
		if ok, wait := a.Admit(r.key, r.at); !ok {
			t.Fatalf("%s came back at its slot and was refused again (retry_after %s)", r.key, wait)
		}
		last = maxTime(last, r.at)
	}
	want := time.Duration(n-burst) * time.Second / rate
	if got := last.Sub(t0); got > want+time.Second || got < want-time.Second {
		t.Fatalf("last admitted %s after the storm, want about %s", got, want)
	}
	if a.Waiting() != 0 {
		t.Fatalf("%d promises left after everyone came back", a.Waiting())
	}
}

func TestAdmissionEarlyReturnKeepsItsSlot(t *testing.T) {
	a := NewAdmission(10, 1)
	if ok, _ := a.Admit("x", t0); !ok {
		t.Fatal("first refused")
	}
	ok, wait := a.Admit("y", t0)
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("y: ok=%v wait=%s, want a 100ms slot", ok, wait)
	}
	// Back early: the same slot, not a later one.
	if ok, w := a.Admit("y", t0.Add(40*time.Millisecond)); ok || w != 60*time.Millisecond {
		t.Fatalf("early y: ok=%v wait=%s, want 60ms to the same slot", ok, w)
	}
	// A newcomer queues behind y.
	if ok, w := a.Admit("z", t0.Add(40*time.Millisecond)); ok || w != 160*time.Millisecond {
		t.Fatalf("z: ok=%v wait=%s, want 160ms", ok, w)
	}
	if ok, _ := a.Admit("y", t0.Add(100*time.Millisecond)); !ok {
		t.Fatal("y refused at its slot")
	}
}

func TestAdmissionIdleScheduleBuysOnlyTheBurst(t *testing.T) {
	a := NewAdmission(100, 5)
	later := t0.Add(time.Hour)
	for i := range 5 {
		if ok, _ := a.Admit(fmt.Sprint(i), later); !ok {
			t.Fatalf("stream %d of the burst refused", i)
		}
	}
	if ok, _ := a.Admit("6", later); ok {
		t.Fatal("an hour idle bought more than the burst")
	}
	var nilA *Admission
	if ok, _ := nilA.Admit("k", t0); !ok {
		t.Fatal("a nil Admission (rate 0) must admit")
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// A flood cannot grow the queue past MaxAhead: later streams are told to come back
// then, without a slot, and the promises held stay bounded.
func TestAdmissionQueueIsBounded(t *testing.T) {
	a := NewAdmission(1, 1)
	var last time.Duration
	for i := range 1000 {
		_, last = a.Admit(fmt.Sprint(i), t0)
	}
	if last != MaxAhead {
		t.Fatalf("retry_after at the end of a flood = %s, want MaxAhead %s", last, MaxAhead)
	}
	if w := a.Waiting(); w > int(MaxAhead/time.Second)+1 {
		t.Fatalf("%d promises held, want at most %d (one a second for MaxAhead)", w, int(MaxAhead/time.Second)+1)
	}
}
