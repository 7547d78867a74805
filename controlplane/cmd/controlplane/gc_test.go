package main

import "testing"

func TestGCPercentKeepsTheFloorWhileLittleIsLive(t *testing.T) {
	for _, c := range []struct {
		scannable uint64
		want      int
	}{
		{0, defaultGCPercent},
		{16 << 20, 400},        // a few hundred daemons: 64 MiB of room
		{256 << 20, 25},        // 64 MiB is exactly 25%
		{800 << 20, 25},        // 10,000 daemons: 25% is more than the floor
		{1 << 10, 10_000},      // nearly empty: capped
		{(64 << 20) * 2, 50},   // twice the floor live
		{(64 << 20) * 100, 25}, // never below the default
	} {
		if got := gcPercentFor(c.scannable); got != c.want {
			t.Errorf("gcPercentFor(%d MiB) = %d, want %d", c.scannable>>20, got, c.want)
		}
	}
}
