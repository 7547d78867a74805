package agent

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// 1,000 hosts whose tokens expire at the same instant refresh over the last half of
// the margin, not in one instant; one token keeps its moment across calls.
func TestRefreshJitterSpreadsAFleet(t *testing.T) {
	margin := 300 * time.Second
	rnd := rand.New(rand.NewPCG(5, 6))
	var buckets [5]int
	for i := range 1000 {
		var r refreshJitter
		tok := "token-" + strconv.Itoa(i)
		m := r.margin(tok, margin, rnd.Float64)
		if m2 := r.margin(tok, margin, rnd.Float64); m2 != m {
			t.Fatalf("one token, two margins: %v then %v", m, m2)
		}
		if m <= margin/2 || m > margin {
			t.Fatalf("margin %v outside (%v, %v]", m, margin/2, margin)
		}
		buckets[int((margin-m)*5/(margin/2))]++
	}
	for i, n := range buckets {
		if n < 100 || n > 300 {
			t.Errorf("fifth %d of the spread holds %d of 1000 refreshes: %v", i, n, buckets)
		}
	}
	var r refreshJitter
	a := r.margin("a", margin, func() float64 { return 0.9 })
	b := r.margin("b", margin, func() float64 { return 0.1 })
	if a == b {
		t.Error("a new token did not get a new draw")
	}
}
