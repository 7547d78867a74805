package rpc_test

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/enrolltoken"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

// refusedAt checks err is a refusal for want that carries the server's clock.
func refusedAt(t *testing.T, err error, want edgev1.RejectReason, clock *fakeClock) {
	t.Helper()
	expectReason(t, err, want)
	r, _ := reject.From(err)
	if r.GetServerTime() == nil {
		t.Fatalf("%s refusal carries no server_time", want)
	}
	if d := r.GetServerTime().AsTime().Sub(clock.Now()); d.Abs() > time.Second {
		t.Fatalf("%s refusal server_time %s, want the server's clock %s", want, r.GetServerTime().AsTime(), clock.Now())
	}
}

func (n *node) attestWith(nonce string, signer ed25519.PrivateKey) error {
	_, err := n.client.Attest(context.Background(), connect.NewRequest(&edgev1.AttestRequest{
		NodeId: n.id, PublicKey: n.pub, Nonce: nonce,
		Signature: ed25519.Sign(signer, seal.AttestMessage(nonce, n.id, n.pub)),
	}))
	return err
}

// Server nonces are single-use and short-lived, for attestation and enrollment
// alike, whatever became of their first use.
func TestNoncesSingleUseAndShortLived(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		c := srv.ClusterClient()
		attestNonce := func(n *node) string {
			return challengeNonce(t, c, edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ATTEST, n.id)
		}

		t.Run("attest nonce used twice", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			nonce := attestNonce(n)
			if err := n.attestWith(nonce, n.key); err != nil {
				t.Fatal(err)
			}
			refusedAt(t, n.attestWith(nonce, n.key), edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
		})
		t.Run("attest nonce spent by a refused attempt", func(t *testing.T) {
			// A refused proof must still spend the nonce, or one challenge would buy
			// unlimited guesses.
			n := enroll(t, srv, srv.EnrollmentToken(t))
			_, wrong := newKey(t)
			nonce := attestNonce(n)
			refusedAt(t, n.attestWith(nonce, wrong), edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, clock)
			refusedAt(t, n.attestWith(nonce, n.key), edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
		})
		t.Run("attest nonce of another node", func(t *testing.T) {
			a := enroll(t, srv, srv.EnrollmentToken(t))
			b := enroll(t, srv, srv.EnrollmentToken(t))
			refusedAt(t, b.attestWith(attestNonce(a), b.key), edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
		})
		t.Run("enrollment nonce used for attestation", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			nonce := challengeNonce(t, c, edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ENROLL, "")
			refusedAt(t, n.attestWith(nonce, n.key), edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
		})
		t.Run("attest nonce expired", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			nonce := attestNonce(n)
			clock.Advance(61 * time.Second)
			refusedAt(t, n.attestWith(nonce, n.key), edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
		})
		t.Run("enroll nonce used twice", func(t *testing.T) {
			pub, priv := newKey(t)
			req := enrollRequest(t, c, srv.EnrollmentToken(t), pub, priv)
			if _, err := c.Enroll(ctx, connect.NewRequest(req)); err != nil {
				t.Fatal(err)
			}
			pub2, priv2 := newKey(t)
			req2 := enrollRequest(t, c, srv.EnrollmentToken(t), pub2, priv2)
			req2.Nonce, req2.Signature = req.Nonce, nil
			_, err := c.Enroll(ctx, connect.NewRequest(signEnroll(req2, priv2)))
			refusedAt(t, err, edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
		})
		t.Run("enroll nonce spent by a refused attempt", func(t *testing.T) {
			// Guessing enrollment secrets costs one challenge per guess.
			text := srv.EnrollmentToken(t)
			pub, priv := newKey(t)
			req := enrollRequest(t, c, text, pub, priv)
			good := req.EnrollmentSecret
			req.EnrollmentSecret = "00000000000000000000000000000000"
			_, err := c.Enroll(ctx, connect.NewRequest(req))
			refusedAt(t, err, edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_INVALID, clock)
			req.EnrollmentSecret = good
			_, err = c.Enroll(ctx, connect.NewRequest(req))
			refusedAt(t, err, edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
			// The token itself is untouched and still enrolls with a fresh nonce.
			if _, err := c.Enroll(ctx, connect.NewRequest(enrollRequest(t, c, text, pub, priv))); err != nil {
				t.Fatalf("enroll with a fresh nonce: %v", err)
			}
		})
		t.Run("enroll nonce expired", func(t *testing.T) {
			text := srv.EnrollmentToken(t)
			pub, priv := newKey(t)
			req := enrollRequest(t, c, text, pub, priv)
			clock.Advance(61 * time.Second)
			_, err := c.Enroll(ctx, connect.NewRequest(req))
			refusedAt(t, err, edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, clock)
			tok, _ := enrolltoken.Parse(text)
			if et, _ := srv.Store.GetEnrollmentToken(ctx, tok.ID); !et.UsedAt.IsZero() {
				t.Error("enrollment token consumed by a refused enrollment")
			}
		})
	})
}

// Brute force against challenge and attest, from one node and from one source
// address, runs into RATE_LIMITED (with the server's time), and the limits refill.
func TestAttestationBruteForceRateLimited(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		c := srv.ClusterClient()
		// untilLimited calls try until it is refused as RATE_LIMITED and returns how
		// many calls got through first.
		untilLimited := func(t *testing.T, max int, try func() error) int {
			t.Helper()
			for i := range max + 1 {
				err := try()
				if reject.Reason(err) == edgev1.RejectReason_REJECT_REASON_RATE_LIMITED {
					refusedAt(t, err, edgev1.RejectReason_REJECT_REASON_RATE_LIMITED, clock)
					return i
				}
			}
			t.Fatalf("still not rate limited after %d calls", max+1)
			return 0
		}

		t.Run("attest challenges for one node", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			challenge := func() error {
				_, err := c.Challenge(ctx, connect.NewRequest(&edgev1.ChallengeRequest{Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ATTEST, NodeId: n.id}))
				return err
			}
			if got := untilLimited(t, 20, challenge); got < 1 {
				t.Fatalf("rate limited from the first challenge")
			}
			// Another node is not slowed by this one's flood.
			other := enroll(t, srv, srv.EnrollmentToken(t))
			if _, err := other.attest(t); err != nil {
				t.Fatalf("another node's attestation: %v", err)
			}
			clock.Advance(2 * time.Second)
			if err := challenge(); err != nil {
				t.Fatalf("challenge after the limit refilled: %v", err)
			}
		})
		t.Run("attest guesses for one node", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			_, wrong := newKey(t)
			guess := func() error { return n.attestWith("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", wrong) }
			untilLimited(t, 20, guess)
			// The genuine key is slowed down as well until the bucket refills: a flood
			// buys the attacker nothing, and the node recovers.
			clock.Advance(2 * time.Second)
			if _, err := n.attest(t); err != nil {
				t.Fatalf("attest after the limit refilled: %v", err)
			}
		})
		t.Run("enrollment challenges from one source", func(t *testing.T) {
			challenge := func() error {
				_, err := c.Challenge(ctx, connect.NewRequest(&edgev1.ChallengeRequest{Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ENROLL}))
				return err
			}
			untilLimited(t, 400, challenge)
			// Every attestation challenge from this address is refused too.
			n := &node{id: "n-000000000000"}
			_, err := c.Challenge(ctx, connect.NewRequest(&edgev1.ChallengeRequest{Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ATTEST, NodeId: n.id}))
			refusedAt(t, err, edgev1.RejectReason_REJECT_REASON_RATE_LIMITED, clock)
			clock.Advance(5 * time.Second)
			if err := challenge(); err != nil {
				t.Fatalf("challenge after the limit refilled: %v", err)
			}
		})
	})
}

// A host whose clock is off is told CLOCK_SKEW, not TOKEN_EXPIRED, with the server's
// time, from which it corrects its timestamps and connects; a host with a good clock
// and an expired token is told TOKEN_EXPIRED. Both refusals carry server_time.
func TestClockSkewToldApartFromExpiry(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		opts.TokenTTL = time.Hour
		opts.MaxClockSkew = time.Minute
		srv := cptest.Start(t, opts)

		for _, off := range []time.Duration{2 * time.Hour, -2 * time.Hour, 90 * time.Second} {
			t.Run("host clock off by "+off.String(), func(t *testing.T) {
				n := enroll(t, srv, srv.EnrollmentToken(t))
				hostClock := func() time.Time { return clock.Now().Add(off) }
				st := n.open(t, hostClock)
				st.send(st.envelope(hello(), nil))
				r := st.expectReject(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW)
				if d := r.GetServerTime().AsTime().Sub(clock.Now()); d.Abs() > time.Second {
					t.Fatalf("server_time %s, want %s", r.GetServerTime().AsTime(), clock.Now())
				}
				// The host learns its offset from server_time and stamps with it.
				offset := r.GetServerTime().AsTime().Sub(hostClock())
				st = n.open(t, func() time.Time { return hostClock().Add(offset) })
				st.hello()
				st.heartbeat()
			})
		}

		t.Run("good clock, expired token", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			clock.Advance(time.Hour + time.Second)
			st := n.open(t, clock.Now)
			st.send(st.envelope(hello(), nil))
			r := st.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_EXPIRED)
			if d := r.GetServerTime().AsTime().Sub(clock.Now()); d.Abs() > time.Second {
				t.Fatalf("server_time %s, want %s", r.GetServerTime().AsTime(), clock.Now())
			}
			// Attestation carries no timestamp: it works whatever the host's clock.
			fresh, err := n.attest(t)
			if err != nil {
				t.Fatal(err)
			}
			n.token = fresh
			n.open(t, clock.Now).hello()
		})
	})
}
