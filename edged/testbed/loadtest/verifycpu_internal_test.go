package loadtest

import (
	"errors"
	"runtime"
	"testing"
	"time"
)

// One slice per tick, each timed by the injected clock and divided by the batch; a
// tick whose clock read fails runs no slice; the median ignores one slow slice (the
// thread shared its core) where a mean would not.
func TestPerOpSlicesAndMedian(t *testing.T) {
	const batch = 8
	costs := []time.Duration{50, 52, 400, 51, 49} // ns per op in each slice
	var now time.Duration
	calls, reads := 0, 0
	clock := func() (time.Duration, error) {
		reads++
		if reads == 7 { // the fourth tick's first read
			return 0, errors.New("clock unavailable")
		}
		return now, nil
	}
	op := func() {
		now += costs[calls/batch]
		calls++
	}
	ticks := make(chan time.Time)
	done := make(chan struct{})
	got := make(chan []time.Duration, 1)
	go func() { got <- perOpSlices(ticks, done, batch, clock, op) }()
	for range len(costs) + 1 { // one tick more: the failed one
		ticks <- time.Time{}
	}
	close(done)
	s := <-got
	if len(s) != len(costs) {
		t.Fatalf("slices %v, want %v", s, costs)
	}
	for i := range costs {
		if s[i] != costs[i] {
			t.Fatalf("slices %v, want %v", s, costs)
		}
	}
	if m := median(s); m != 51 {
		t.Errorf("median of %v = %v, want 51", s, m)
	}
	if m := median([]time.Duration{400, 50, 52, 49}); m != 51 {
		t.Errorf("median of an even count = %v, want 51 (the mean of 50 and 52)", m)
	}
	if m := median(nil); m != 0 {
		t.Errorf("median of none = %v", m)
	}
	if s[2] != 400 {
		t.Errorf("median sorted its argument in place: %v", s)
	}
}

// The thread CPU clock on this machine: a slice of real work costs a positive CPU
// time, and the sampler stops cleanly.
func TestThreadCPUSlice(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("thread CPU clock: Linux")
	}
	v := startVerifyCPU()
	if v == nil {
		t.Fatal("no thread CPU clock on Linux")
	}
	if d, n := v.stop(); n > 0 && d <= 0 {
		t.Errorf("%d slices with a median of %v", n, d)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ticks := make(chan time.Time, 1)
	ticks <- time.Time{}
	done := make(chan struct{})
	calls := 0
	s := perOpSlices(ticks, done, 4, threadCPU, func() {
		x := 0
		for i := range 100000 {
			x += i * i
		}
		_ = x
		if calls++; calls == 4 {
			close(done) // after this batch, no more
		}
	})
	if len(s) != 1 || s[0] <= 0 {
		t.Fatalf("slices %v, want one positive", s)
	}
}
