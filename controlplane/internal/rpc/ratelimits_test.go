package rpc_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

func enrollChallenge(c interface {
	Challenge(context.Context, *connect.Request[edgev1.ChallengeRequest]) (*connect.Response[edgev1.ChallengeResponse], error)
}) error {
	_, err := c.Challenge(context.Background(), connect.NewRequest(&edgev1.ChallengeRequest{Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ENROLL}))
	return err
}

// A source over --challenge-rate-per-source is refused rate_limited with the time
// until its bucket refills; at that time it is served again.
func TestChallengeLimitSaysWhenToRetry(t *testing.T) {
	clock := newFakeClock()
	srv := cptest.Start(t, cptest.Options{Now: clock.Now, ChallengeRatePerSource: 4, ChallengeBurstPerSource: 2})
	c := srv.ClusterClient()
	for range 2 {
		if err := enrollChallenge(c); err != nil {
			t.Fatalf("challenge within the burst: %v", err)
		}
	}
	err := enrollChallenge(c)
	expectReason(t, err, edgev1.RejectReason_REJECT_REASON_RATE_LIMITED)
	if ra := reject.RetryAfter(err); ra != 250*time.Millisecond {
		t.Fatalf("retry_after = %s, want 250ms (4/s)", ra)
	}
	clock.Advance(250 * time.Millisecond)
	if err := enrollChallenge(c); err != nil {
		t.Fatalf("challenge at the retry-after: %v", err)
	}
}

// A named bulk source (a bastion) enrolls at --bulk-enroll-rate while the tight
// per-source limit still holds for every other address.
func TestBulkEnrollSourceGetsItsOwnLimit(t *testing.T) {
	clock := newFakeClock()
	bulk := cptest.Start(t, cptest.Options{Now: clock.Now, ChallengeRatePerSource: 1, ChallengeBurstPerSource: 1,
		BulkEnrollSources: "10.9.0.0/16, 127.0.0.1", BulkEnrollRate: 1000, BulkEnrollBurst: 100})
	c := bulk.ClusterClient()
	for i := range 100 {
		if err := enrollChallenge(c); err != nil {
			t.Fatalf("bulk source, challenge %d: %v", i, err)
		}
	}
	expectReason(t, enrollChallenge(c), edgev1.RejectReason_REJECT_REASON_RATE_LIMITED)

	// The same settings without this address among the bulk sources: the tight limit.
	tight := cptest.Start(t, cptest.Options{Now: clock.Now, ChallengeRatePerSource: 1, ChallengeBurstPerSource: 1,
		BulkEnrollSources: "10.9.0.0/16", BulkEnrollRate: 1000, BulkEnrollBurst: 100})
	tc := tight.ClusterClient()
	if err := enrollChallenge(tc); err != nil {
		t.Fatal(err)
	}
	expectReason(t, enrollChallenge(tc), edgev1.RejectReason_REJECT_REASON_RATE_LIMITED)
}

// Attestation challenges past --attest-rate-per-node are refused with a
// retry-after too.
func TestAttestLimitSaysWhenToRetry(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n := enroll(t, srv, srv.EnrollmentToken(t))
	var err error
	for range 12 { // burst 10 at 1/s
		if _, err = n.client.Challenge(context.Background(), connect.NewRequest(&edgev1.ChallengeRequest{
			Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ATTEST, NodeId: n.id,
		})); err != nil {
			break
		}
	}
	expectReason(t, err, edgev1.RejectReason_REJECT_REASON_RATE_LIMITED)
	if ra := reject.RetryAfter(err); ra <= 0 || ra > time.Second {
		t.Fatalf("retry_after = %s, want up to 1s (1/s per node)", ra)
	}
}
