package main

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// defaultGCPercent is the Go garbage collector's GOGC for `controlplane serve` when
// the environment does not set GOGC.
//
// Why not Go's 100: the control plane's memory is mostly long-lived state per
// connected daemon (its TLS connection, HTTP/2 stream and session, about 33 KiB of
// live heap, plus 32 KiB of goroutine stacks), and it allocates little per
// heartbeat. Since Go 1.18 the collector's goal counts goroutine stacks as well as the
// live heap, so at 100 every connected daemon buys room for another ~65 KiB of
// garbage before a collection: measured with aegis-loadtest connect at 5,000
// daemons, 117 KiB of RSS per daemon at 100 against 88 KiB at 25, while the
// collector's share of the CPU stayed around 1-3%. Operators who would rather trade
// the other way set GOGC (and GOMEMLIMIT under a container limit) as for any Go
// program; the environment always wins.
const defaultGCPercent = 25

// gcHeadroomFloor is the least room for new allocations the collector is given
// between two collections. 25% is little room when little is live: a control plane
// with a few hundred daemons holds some 20 MiB, so at 25 it collected every 5 MiB,
// and a burst of rotations (each allocates its requests, rows and tokens) spent
// 16% of its CPU in the collector (aegis-loadtest rotate, PostgreSQL, 32 in flight).
// With thousands connected, 25% of what is live is far more than the floor, which
// then changes nothing.
const gcHeadroomFloor = 64 << 20

// gcRetuneEvery is how often the floor is re-checked against what is live.
const gcRetuneEvery = 500 * time.Millisecond

// tuneGC applies defaultGCPercent, raised as far as gcHeadroomFloor asks while
// little is live, unless GOGC is set.
func tuneGC(ctx context.Context, log *slog.Logger) {
	if v, set := os.LookupEnv("GOGC"); set {
		log.Debug("garbage collector target from the environment", "GOGC", v)
		return
	}
	debug.SetGCPercent(defaultGCPercent)
	go keepGCHeadroom(ctx)
}

// gcPercentFor is the GOGC that gives the collector at least gcHeadroomFloor of room
// over scannable (the live heap, goroutine stacks and globals the collector's goal
// is computed from), and never less than defaultGCPercent.
func gcPercentFor(scannable uint64) int {
	if scannable == 0 {
		return defaultGCPercent
	}
	p := int(min(gcHeadroomFloor*100/scannable, 10_000))
	return max(p, defaultGCPercent)
}

// keepGCHeadroom re-applies gcPercentFor as what is live changes, until ctx ends.
func keepGCHeadroom(ctx context.Context) {
	samples := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/scan/stack:bytes"},
		{Name: "/gc/scan/globals:bytes"},
	}
	applied := defaultGCPercent
	tick := time.NewTicker(gcRetuneEvery)
	defer tick.Stop()
	for {
		metrics.Read(samples)
		var scannable uint64
		for _, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				scannable += s.Value.Uint64()
			}
		}
		// Only a change worth a tenth moves the target: each SetGCPercent call
		// briefly stops the world.
		if p := gcPercentFor(scannable); p*10 > applied*11 || p*11 < applied*10 {
			debug.SetGCPercent(p)
			applied = p
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
