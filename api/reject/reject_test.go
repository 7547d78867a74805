package reject

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

func TestRoundTripThroughWrapping(t *testing.T) {
	now := time.Unix(1_800_000_000, 0).UTC()
	err := fmt.Errorf("wrapped: %w", New(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW, "timestamp 90s off", now))
	r, ok := From(err)
	if !ok || r.GetReason() != edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW || !r.GetServerTime().AsTime().Equal(now) {
		t.Fatalf("From = %v, %v", r, ok)
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("code = %v", connect.CodeOf(err))
	}
	if _, ok := From(errors.New("plain")); ok {
		t.Fatal("plain error has a rejection")
	}
}

func TestOnlyRevokedAndUnknownAreTerminal(t *testing.T) {
	for v := range edgev1.RejectReason_name {
		r := edgev1.RejectReason(v)
		want := r == edgev1.RejectReason_REJECT_REASON_REVOKED || r == edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE
		if IsTerminal(r) != want {
			t.Errorf("IsTerminal(%v) = %v", r, !want)
		}
		if IsTerminal(r) && NeedsAttest(r) {
			t.Errorf("%v is both terminal and re-attestable", r)
		}
	}
	if Short(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW) != "clock_skew" {
		t.Fatal(Short(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW))
	}
}
