package rpc_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

func scrape(t *testing.T, srv *cptest.Server) string {
	t.Helper()
	code, body := get(t, srv, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	return body
}

// /metrics after a rotation, its retry, two refusals and a token refresh; then the
// blacklist is purged by housekeeping once its tokens would have expired anyway, in
// the store and in the gauge.
func TestRotationMetricsAndBlacklistPurge(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		opts.TokenTTL = time.Hour
		opts.HousekeepingInterval = 20 * time.Millisecond
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))

		r := n.newRotation(t, clock.Now())
		resp, err := n.rotate(t, r, clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.rotate(t, r, clock.Now()); err != nil { // a retry: replayed
			t.Fatal(err)
		}
		n.adopt(r, resp)
		bad := n.newRotation(t, clock.Now())
		bad.payload.NewKeySignature = nil
		_, err = n.rotate(t, bad, clock.Now())
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
		_, stranger := newKey(t)
		_, err = n.send(t, n.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, stranger, n.token, n.newRotation(t, clock.Now()).payload, clock.Now()))
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
		// A refresh supersedes the rotation's token.
		if _, err := n.attest(t); err != nil {
			t.Fatal(err)
		}

		body := scrape(t, srv)
		for series, want := range map[string]string{
			`aegis_edge_key_rotations_total{reason="none",result="ok"}`:               "1",
			`aegis_edge_key_rotations_total{reason="none",result="replayed"}`:         "1",
			`aegis_edge_key_rotations_total{reason="bad_signature",result="refused"}`: "2",
			`aegis_edge_key_rotation_duration_seconds_count`:                          "4",
			`aegis_edge_token_refreshes_total`:                                        "1",
			`aegis_edge_envelope_rejections_total{reason="bad_signature"}`:            "1",
			`aegis_edge_token_blacklist_entries`:                                      "2",
		} {
			if got := metricValue(t, body, series); got != want {
				t.Errorf("%s = %s, want %s", series, got, want)
			}
		}
		if strings.Contains(body, n.id) || strings.Contains(body, n.token) {
			t.Fatal("/metrics names a node or holds a token")
		}

		// Housekeeping purges entries once their tokens have expired anyway.
		clock.Advance(time.Hour + time.Minute)
		deadline := time.Now().Add(5 * time.Second)
		for {
			count, err := srv.Store.CountBlacklist(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if count == 0 && metricValue(t, scrape(t, srv), "aegis_edge_token_blacklist_entries") == "0" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("blacklist still holds %d rows an hour after its tokens expired", count)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
