package agent

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/url"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// 2,000 daemons told to come back over [1s, 9s) by a control plane whose restart
// takes 5s: the thousand hinted before it serves find nothing listening. Their
// retries spread over about as long as they were told to wait, instead of coming back
// together the moment the new process listens (as a backoff from 250ms would bring
// most of them within its first second, on top of those arriving on their hint).
func TestRetriesAfterAnUnansweredHintSpreadOut(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 8))
	a := New(Config{Jitter: rnd.Float64})
	const n, up = 2000, 5 * time.Second
	early, firstSecond := 0, 0
	for i := range n {
		hint := time.Second + 8*time.Second*time.Duration(i)/n
		if hint >= up {
			continue
		}
		early++
		at := hint
		for attempt := 0; at < up; attempt++ {
			d := a.afterUnansweredHint(hint, attempt)
			if d < 0 || d >= max(hint, a.cfg.MaxBackoff) {
				t.Fatalf("hint %s, attempt %d: retry in %s, outside [0, %s)", hint, attempt, d, max(hint, a.cfg.MaxBackoff))
			}
			at += d
		}
		if at < up+time.Second {
			firstSecond++
		}
	}
	if firstSecond*10 > early*4 {
		t.Errorf("%d of the %d early daemons came back in the first second after the restart, want at most 40%%", firstSecond, early)
	}
}

// The spread applies to a dial that found nothing listening (connection refused),
// not to a server that answered: its refusals carry their own delays.
func TestNothingListened(t *testing.T) {
	refused := connect.NewError(connect.CodeUnavailable, &url.Error{Op: "Post", URL: "https://cp:7443/x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}})
	if !nothingListened(refused) {
		t.Errorf("a refused dial: want nothing listened")
	}
	reset := connect.NewError(connect.CodeUnavailable, &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset")})
	if nothingListened(reset) || nothingListened(errors.New("the control plane closed the stream")) || nothingListened(nil) {
		t.Errorf("a server that answered counts as nothing listening")
	}
}
