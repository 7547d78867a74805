package agent

import (
	"testing"
	"time"
)

func TestBackoffFullJitterCapped(t *testing.T) {
	lo, hi := 100*time.Millisecond, 2*time.Second
	one := func() float64 { return 0.999999 }
	var prev time.Duration
	for n := 0; n < 10; n++ {
		d := backoff(n, lo, hi, one)
		if d > hi {
			t.Fatalf("attempt %d: %s above the cap", n, d)
		}
		if d < prev {
			t.Fatalf("attempt %d: ceiling shrank: %s < %s", n, d, prev)
		}
		prev = d
	}
	if prev < hi*99/100 {
		t.Fatalf("ceiling never reached the cap: %s", prev)
	}
	if d := backoff(3, lo, hi, func() float64 { return 0 }); d != 0 {
		t.Fatalf("full jitter must reach 0, got %s", d)
	}
	if d := backoff(2, lo, hi, func() float64 { return 0.5 }); d != 200*time.Millisecond {
		t.Fatalf("attempt 2 at half: %s, want 200ms", d)
	}
	if d := backoff(1000, lo, hi, one); d > hi {
		t.Fatalf("overflow: %s", d)
	}
}
