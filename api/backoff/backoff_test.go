package backoff_test

import (
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/backoff"
)

func fixed(f float64) func() float64 { return func() float64 { return f } }

func TestDelayDoublesUpToTheCapThenJitters(t *testing.T) {
	p := backoff.Policy{Min: 100 * time.Millisecond, Max: time.Second, Rand: fixed(0.5)}
	want := []time.Duration{50, 100, 200, 400, 500, 500, 500}
	for n, w := range want {
		if got := p.Delay(n); got != w*time.Millisecond {
			t.Errorf("Delay(%d) = %s, want %s", n, got, w*time.Millisecond)
		}
	}
	// The cap is applied before the jitter: at the cap, delays still spread over
	// [0, Max) rather than piling up on Max.
	lo := backoff.Policy{Min: 100 * time.Millisecond, Max: time.Second, Rand: fixed(0)}
	hi := backoff.Policy{Min: 100 * time.Millisecond, Max: time.Second, Rand: fixed(0.999)}
	if got := lo.Delay(50); got != 0 {
		t.Errorf("Delay(50) with rand 0 = %s, want 0", got)
	}
	if got := hi.Delay(50); got >= time.Second || got < 990*time.Millisecond {
		t.Errorf("Delay(50) with rand 0.999 = %s, want just under 1s", got)
	}
}

func TestDelayStaysBelowCeilingForAnyRandom(t *testing.T) {
	p := backoff.Policy{Min: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for n := range 200 {
		if d := p.Delay(n % 10); d < 0 || d >= p.Ceiling(n%10) {
			t.Fatalf("Delay(%d) = %s outside [0, %s)", n%10, d, p.Ceiling(n%10))
		}
	}
	// A broken source (1.0 or negative) cannot push a delay past the cap.
	for _, f := range []float64{1, 2, -1} {
		q := p
		q.Rand = fixed(f)
		if d := q.Delay(5); d < 0 || d >= p.Ceiling(5) {
			t.Errorf("rand %v: Delay = %s outside [0, %s)", f, d, p.Ceiling(5))
		}
	}
}

func TestAfterNeverShorterThanTheHintAndCappedBeforeJitter(t *testing.T) {
	p := backoff.Policy{Min: 250 * time.Millisecond, Max: 30 * time.Second, Rand: fixed(0.5)}
	cases := []struct{ hint, want time.Duration }{
		{0, 0},
		{-time.Second, 0},
		{time.Second, time.Second + 50*time.Millisecond},          // a tenth of 1s, halved
		{10 * time.Second, 10*time.Second + 125*time.Millisecond}, // spread capped at Min
		{time.Hour, 30*time.Second + 125*time.Millisecond},        // capped at Max, then jittered
	}
	for _, c := range cases {
		if got := p.After(c.hint); got != c.want {
			t.Errorf("After(%s) = %s, want %s", c.hint, got, c.want)
		}
	}
	zero := backoff.Policy{Min: 250 * time.Millisecond, Max: 30 * time.Second, Rand: fixed(0)}
	if got := zero.After(3 * time.Second); got != 3*time.Second {
		t.Errorf("After(3s) with rand 0 = %s, want exactly 3s", got)
	}
}

func TestZeroPolicyHasDefaults(t *testing.T) {
	var p backoff.Policy
	if p.Ceiling(0) != 250*time.Millisecond || p.Ceiling(100) != 30*time.Second {
		t.Errorf("zero policy ceilings %s..%s, want 250ms..30s", p.Ceiling(0), p.Ceiling(100))
	}
}
