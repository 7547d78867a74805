package enroll_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/enroll"
)

// Hosts enrolling from one address faster than --challenge-rate-per-source are told
// when to retry and do, within their budget: all of them enroll, none is refused.
func TestEnrollWaitsOutTheSourceLimit(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{ChallengeRatePerSource: 10, ChallengeBurstPerSource: 1})
	for i := range 4 {
		dir := stateDir(t)
		if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), StateDir: dir, Name: "h"}); err != nil {
			t.Fatalf("host %d, over the per-source limit: %v; want it to wait the retry-after and enroll", i, err)
		}
	}
}

// A retry-after longer than the enrollment's budget is not waited for: the error
// says when to run the command again and names the bulk setting.
func TestEnrollRateLimitedBeyondItsBudgetSaysWhen(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{ChallengeRatePerSource: 0.01, ChallengeBurstPerSource: 1})
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), StateDir: stateDir(t), Name: "a"}); err != nil {
		t.Fatal(err)
	}
	dir := stateDir(t)
	_, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t), StateDir: dir, Name: "b", Timeout: 2 * time.Second})
	if !errors.Is(err, enroll.ErrRejected) || !strings.Contains(err.Error(), "run the command again in") || !strings.Contains(err.Error(), "--bulk-enroll-sources") {
		t.Fatalf("err = %v, want a rate-limited refusal saying when to retry", err)
	}
	assertNoState(t, dir)
}
