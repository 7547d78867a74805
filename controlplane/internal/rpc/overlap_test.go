package rpc_test

import (
	"crypto/ed25519"
	"sync"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

// as seals the next envelope of s under key and token instead of the node's
// current ones (an envelope the daemon sealed before its swap).
func (s *stream) as(key ed25519.PrivateKey, token string, ev *edgev1.EdgeEvent) *edgev1.SealNodeEnvelope {
	s.t.Helper()
	k, tok := s.n.key, s.n.token
	s.n.key, s.n.token = key, token
	defer func() { s.n.key, s.n.token = k, tok }()
	return s.envelope(ev, nil)
}

// The guide's promise: rotation is invisible to a live stream. Heartbeats flow every
// 50 ms on one stream; the rotation commits in the middle; envelopes the daemon had
// sealed under the old key before its swap are acked, then the new key and token on
// the same stream, and a late old-key envelope inside the overlap too. No message is
// lost and the stream never ends. Once overlap_until has passed, the old key is
// refused on that very stream.
func TestStreamStraddlesRotation(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		st := n.open(t, clock.Now)
		st.hello()

		cmds := make(chan *edgev1.EdgeCommand, 4096)
		ended := make(chan error, 1)
		go func() {
			for {
				cmd, err := st.recv()
				if err != nil {
					ended <- err
					return
				}
				cmds <- cmd
			}
		}()

		// mu serializes Sends and guards the node's credentials and sent.
		var mu sync.Mutex
		var sent []uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				mu.Lock()
				env := st.envelope(heartbeat(), nil)
				st.send(env)
				sent = append(sent, env.GetSequence())
				mu.Unlock()
			}
		})
		time.Sleep(300 * time.Millisecond)

		mu.Lock()
		oldKey, oldToken := n.key, n.token
		var inflight []*edgev1.SealNodeEnvelope
		for range 3 {
			inflight = append(inflight, st.as(oldKey, oldToken, heartbeat()))
		}
		r := n.newRotation(t, clock.Now())
		resp, err := n.rotate(t, r, clock.Now())
		if err != nil {
			mu.Unlock()
			t.Fatalf("rotate mid-stream: %v (reason %s)", err, reject.Reason(err))
		}
		for _, env := range inflight {
			st.send(env)
			sent = append(sent, env.GetSequence())
		}
		n.adopt(r, resp)
		mu.Unlock()

		time.Sleep(300 * time.Millisecond)
		mu.Lock()
		late := st.as(oldKey, oldToken, heartbeat())
		st.send(late)
		sent = append(sent, late.GetSequence())
		mu.Unlock()
		time.Sleep(200 * time.Millisecond)
		close(stop)
		wg.Wait()

		// Every heartbeat acked, in order, and nothing else said.
		deadline := time.After(5 * time.Second)
		for i, seq := range sent {
			select {
			case cmd := <-cmds:
				if cmd.GetHeartbeatAck().GetSequence() != seq {
					t.Fatalf("message %d: got %v, want the ack of %d", i, cmd, seq)
				}
			case err := <-ended:
				t.Fatalf("stream ended after %d of %d acks: %v (reason %s)", i, len(sent), err, reject.Reason(err))
			case <-deadline:
				t.Fatalf("only %d of %d heartbeats acked", i, len(sent))
			}
		}
		if len(sent) < 10 {
			t.Fatalf("only %d heartbeats sent", len(sent))
		}
		select {
		case err := <-ended:
			t.Fatalf("stream ended: %v", err)
		default:
		}

		// Past overlap_until: the new key still works, the old one is refused.
		clock.Advance(resp.GetOverlapUntil().AsTime().Sub(resp.GetRotatedAt().AsTime()) + time.Second)
		env := st.envelope(heartbeat(), nil)
		st.send(env)
		if cmd := <-cmds; cmd.GetHeartbeatAck().GetSequence() != env.GetSequence() {
			t.Fatalf("new key after the overlap: got %v", cmd)
		}
		st.send(st.as(oldKey, oldToken, heartbeat()))
		select {
		case err := <-ended:
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH)
		case cmd := <-cmds:
			t.Fatalf("old key after the overlap: got %v, want a refusal", cmd)
		case <-time.After(5 * time.Second):
			t.Fatal("old key after the overlap: no answer")
		}
	})
}

// A stream that verified the old token keeps it through the overlap even when the
// daemon never switches on it (its record of the node is stale after the rotation),
// and loses it at overlap_until.
func TestOverlapEndsOnStreamThatNeverSwitched(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		opts.RotationOverlap = 30 * time.Second
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		st := n.open(t, clock.Now)
		st.hello()
		st.heartbeat()

		oldKey, oldToken := n.key, n.token
		r := n.newRotation(t, clock.Now())
		if _, err := n.rotate(t, r, clock.Now()); err != nil {
			t.Fatal(err)
		}
		st.heartbeat() // old key and token, inside the overlap
		clock.Advance(29 * time.Second)
		st.heartbeat()
		clock.Advance(2 * time.Second)
		st.send(st.as(oldKey, oldToken, heartbeat()))
		st.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH)
	})
}
