package loadtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"runtime"
	"slices"
	"time"
)

// The connect scenario's reference: what one Ed25519 verify costs in CPU time,
// measured in the same window and the same unit as the control plane's CPU per
// heartbeat. The server's figure is process CPU time over the steady window, on a
// box the daemons saturate; a verify timed by the wall clock before the daemons
// start is measured on an idle box and counts time the thread was not running, so
// the ratio of the two moved from run to run (1.89 and 3.05 verifies per heartbeat
// for the same code). Instead, a goroutine locked to its OS thread runs a short
// slice of verifies every interval through the window and times each slice with
// the thread's own CPU clock; the median slice is the reference. At 64 verifies
// every 500ms it costs the box about 1% of a core.

const (
	verifySliceEvery = 500 * time.Millisecond
	verifySliceBatch = 64
)

// verifySampler measures Ed25519 verify CPU time in slices until stopped.
type verifySampler struct {
	done   chan struct{}
	result chan []time.Duration
}

// startVerifyCPU starts the slices. On a system without a per-thread CPU clock it
// returns nil (the caller keeps the wall-clock reference).
func startVerifyCPU() *verifySampler {
	if _, err := threadCPU(); err != nil {
		return nil
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub := priv.Public().(ed25519.PublicKey)
	msg := make([]byte, 200)
	sig := ed25519.Sign(priv, msg)
	v := &verifySampler{done: make(chan struct{}), result: make(chan []time.Duration, 1)}
	go func() {
		// The thread's CPU clock is only this goroutine's while it owns the thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t := time.NewTicker(verifySliceEvery)
		defer t.Stop()
		v.result <- perOpSlices(t.C, v.done, verifySliceBatch, threadCPU, func() {
			if !ed25519.Verify(pub, msg, sig) {
				panic("ed25519 reference: verify failed")
			}
		})
	}()
	return v
}

// stop ends the slices and returns the median CPU time of one verify and how many
// slices it is the median of (0, 0 if none completed).
func (v *verifySampler) stop() (perVerify time.Duration, n int) {
	close(v.done)
	s := <-v.result
	return median(s), len(s)
}

// perOpSlices runs batch calls of op at each tick until done is closed, times each
// batch with clock (a CPU clock of the calling thread) and returns each batch's
// time per call. A batch whose clock read fails is left out.
func perOpSlices(ticks <-chan time.Time, done <-chan struct{}, batch int, clock func() (time.Duration, error), op func()) []time.Duration {
	var out []time.Duration
	for {
		select {
		case <-done:
			return out
		case <-ticks:
		}
		t0, err := clock()
		if err != nil {
			continue
		}
		for range batch {
			op()
		}
		t1, err := clock()
		if err != nil || t1 < t0 {
			continue
		}
		out = append(out, (t1-t0)/time.Duration(batch))
	}
}

// median is the middle value of ds (the mean of the two middle ones for an even
// count), 0 for none. ds is not modified.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}
