package rpc_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/ratelimit"
	"github.com/aegis-edge/aegis/controlplane/internal/rpc"
)

// A stream over the admission rate is refused busy with the time of its own slot;
// back early it is told the same slot again (not a later one), back at its slot it
// is admitted, and none of it costs the node its identity.
func TestStreamAdmissionBusyCarriesItsSlot(t *testing.T) {
	clock := newFakeClock()
	srv := cptest.Start(t, cptest.Options{Now: clock.Now, StreamAdmissionRate: 2, StreamAdmissionBurst: 1})
	a := enroll(t, srv, srv.EnrollmentToken(t))
	b := enroll(t, srv, srv.EnrollmentToken(t))

	first := a.open(t, clock.Now)
	first.hello()

	refused := func() time.Duration {
		t.Helper()
		st := b.open(t, clock.Now)
		st.send(st.envelope(hello(), nil))
		r := st.expectReject(edgev1.RejectReason_REJECT_REASON_BUSY)
		if r.GetRetryAfter() == nil {
			t.Fatalf("busy refusal without retry_after: %v", r)
		}
		return r.GetRetryAfter().AsDuration()
	}
	if got := refused(); got != 500*time.Millisecond {
		t.Fatalf("retry_after = %s, want the next slot, 500ms (rate 2/s)", got)
	}
	clock.Advance(200 * time.Millisecond)
	if got := refused(); got != 300*time.Millisecond {
		t.Fatalf("back early: retry_after = %s, want the same slot, 300ms away", got)
	}
	clock.Advance(300 * time.Millisecond)
	b.open(t, clock.Now).hello()

	body := scrape(t, srv)
	if got := metricValue(t, body, `aegis_edge_stream_admissions_total{result="busy"}`); got != "2" {
		t.Errorf("busy admissions = %s, want 2", got)
	}
	if got := metricValue(t, body, `aegis_edge_stream_admissions_total{result="admitted"}`); got != "2" {
		t.Errorf("admitted = %s, want 2", got)
	}
}

// The refusal travels as Unavailable (retryable for any gRPC client) with the typed
// reason, and a busy node still attests: admission says nothing about identity.
func TestStreamAdmissionBusyIsUnavailableAndHarmless(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{StreamAdmissionRate: 0.001, StreamAdmissionBurst: 1})
	a := enroll(t, srv, srv.EnrollmentToken(t))
	b := enroll(t, srv, srv.EnrollmentToken(t))
	a.open(t, time.Now).hello()
	st := b.open(t, time.Now)
	st.send(st.envelope(hello(), nil))
	_, err := st.recv()
	if connect.CodeOf(err) != connect.CodeUnavailable || reject.Reason(err) != edgev1.RejectReason_REJECT_REASON_BUSY {
		t.Fatalf("over the rate: %v (code %s), want Unavailable with BUSY", err, connect.CodeOf(err))
	}
	// The next slot at 0.001/s is 1000s away: past the queue's bound, so the stream
	// is told to come back at the bound instead.
	if ra := reject.RetryAfter(err); ra != ratelimit.MaxAhead {
		t.Fatalf("retry_after %s, want the queue bound %s", ra, ratelimit.MaxAhead)
	}
	if _, err := b.attest(t); err != nil {
		t.Fatalf("a busy node could not attest: %v", err)
	}
}

// On shutdown every stream gets its own reconnect_after: from 1s, evenly over just
// the time the next start needs to admit them all at 80% of its rate, never past the
// window.
func TestShutdownHintsSpreadOverWhatTheNextStartAdmits(t *testing.T) {
	c := rpc.NewCluster(rpc.ClusterConfig{AdmissionRate: 300, ShutdownWindow: 30 * time.Second})
	hint := c.ShutdownHints()
	check := func(n int, wantLast time.Duration) {
		t.Helper()
		prev := time.Duration(0)
		for i := range n {
			h := hint(i, n)
			if h < time.Second || h > time.Second+30*time.Second {
				t.Fatalf("n=%d: hint %d = %s, outside [1s, 31s]", n, i, h)
			}
			if h < prev {
				t.Fatalf("n=%d: hints not spread in order: %s after %s", n, h, prev)
			}
			prev = h
		}
		if d := prev - wantLast; d > 10*time.Millisecond || d < -10*time.Millisecond {
			t.Errorf("n=%d: last hint %s, want about %s", n, prev, wantLast)
		}
	}
	check(24, time.Second+100*time.Millisecond) // 24 streams: 0.1s at 240/s
	check(2400, time.Second+10*time.Second)     // 2,400: 10s
	check(10000, time.Second+30*time.Second)    // 10,000 would need 42s: the window caps it
}

// With the default window, 10,000 streams at the default admission rate are told to
// come back at no more than 80% of that rate in any second, so the next start admits
// each on its first attempt with room for the daemons that are late or early; and
// the last of them is back within a minute.
func TestShutdownHintsLeaveHeadroomAtTenThousand(t *testing.T) {
	c := rpc.NewCluster(rpc.ClusterConfig{AdmissionRate: ratelimit.DefaultAdmissionRate})
	hint := c.ShutdownHints()
	const n = 10000
	perSecond := map[time.Duration]int{}
	last := time.Duration(0)
	for i := range n {
		h := hint(i, n)
		perSecond[(h-time.Second)/time.Second]++
		last = max(last, h)
	}
	limit := int(0.8 * ratelimit.DefaultAdmissionRate)
	for sec, k := range perSecond {
		if k > limit {
			t.Errorf("second %d after the first hint: %d streams told to come back, want at most %d (80%% of %d/s)", sec, k, limit, ratelimit.DefaultAdmissionRate)
		}
	}
	if last > 60*time.Second {
		t.Errorf("last hint %s: the fleet would not be back within a minute", last)
	}
}

// The hints begin once the next start is expected to serve: the restart the control
// plane estimates (its own start, its drain) comes before the first hint, so no
// daemon is told to come back while nothing listens.
func TestShutdownHintsWaitOutTheRestart(t *testing.T) {
	c := rpc.NewCluster(rpc.ClusterConfig{AdmissionRate: 300, ShutdownWindow: 30 * time.Second,
		RestartEstimate: func(int) time.Duration { return 5 * time.Second }})
	hint := c.ShutdownHints()
	if got := hint(0, 2400); got != 6*time.Second {
		t.Errorf("first hint %s, want 1s + the 5s restart", got)
	}
	if got := hint(2399, 2400); got < 15*time.Second || got > 16*time.Second {
		t.Errorf("last hint %s, want about 6s + 10s", got)
	}
	if got := hint(0, 1); got != 6*time.Second {
		t.Errorf("one stream: %s, want 6s", got)
	}
}

// A real shutdown tells each open stream Disconnect{SHUTDOWN} with a hint of its own.
func TestShutdownSendsEachStreamItsOwnHint(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{StreamAdmissionRate: 2, StreamAdmissionBurst: 10, ShutdownReconnectWindow: 10 * time.Second})
	const n = 4
	var streams []*stream
	for range n {
		nd := enroll(t, srv, srv.EnrollmentToken(t))
		st := nd.open(t, time.Now)
		st.hello()
		streams = append(streams, st)
	}
	go srv.Stop()
	seen := map[time.Duration]bool{}
	for _, st := range streams {
		cmd, err := st.recv()
		if err != nil {
			t.Fatalf("no Disconnect on shutdown: %v", err)
		}
		d := cmd.GetDisconnect()
		if d.GetReason() != edgev1.DisconnectReason_DISCONNECT_REASON_SHUTDOWN {
			t.Fatalf("got %v, want Disconnect{SHUTDOWN}", cmd)
		}
		h := d.GetReconnectAfter().AsDuration()
		// 4 streams at 80% of 2/s: spread over 2.5s from 1s and the time this
		// server's own start took (well under 5s, even on a loaded box).
		if h < time.Second || h >= 1*time.Second+5*time.Second+2500*time.Millisecond {
			t.Errorf("hint %s outside [1s, 8.5s)", h)
		}
		seen[h] = true
	}
	if len(seen) != n {
		t.Errorf("hints %v: want %d distinct", seen, n)
	}
}

// A stream kicked by the shutdown leaves its session row to the server, which
// clears all of its rows at once when the streams are gone: after a restart no
// host is shown on a session of the process that stopped.
func TestShutdownClearsTheSessionRows(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	var ids []string
	for range 3 {
		nd := enroll(t, srv, srv.EnrollmentToken(t))
		nd.open(t, time.Now).hello()
		ids = append(ids, nd.id)
	}
	srv.Restart(t)
	for _, id := range ids {
		d, err := srv.Store.GetDaemon(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if d.SessionID != "" || d.SessionReplica != "" {
			t.Errorf("%s after the restart: session (%q, %q), want none", id, d.SessionID, d.SessionReplica)
		}
	}
}

// Every family the alerts and dashboards need is on the first scrape, before any
// traffic: the RPC latency histogram for each procedure and the revocation
// propagation histogram (an alert reads its _bucket series).
func TestLatencyAndPropagationFamiliesOnFirstScrape(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	body := scrape(t, srv)
	for _, series := range []string{
		`aegis_edge_revocation_propagation_seconds_bucket{le="+Inf"}`,
		`aegis_edge_revocation_propagation_seconds_count`,
		`aegis_rpc_duration_seconds_count{procedure="/aegis.edge.v1.NodeClusterService/ConnectEdge"}`,
		`aegis_rpc_duration_seconds_count{procedure="/aegis.edge.v1.EdgeAdminService/RevokeHost"}`,
		`aegis_edge_rpc_requests_total{code="ok",procedure="/aegis.edge.v1.NodeClusterService/Attest"}`,
		`aegis_edge_stream_admissions_total{result="busy"}`,
	} {
		if got := metricValue(t, body, series); got != "0" {
			t.Errorf("%s = %s on the first scrape, want 0", series, got)
		}
	}
}

// A revoke-remote closes the host's stream and the time from the revocation to the
// close is observed once; the RPC's own latency is observed too.
func TestRevocationPropagationObserved(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n := enroll(t, srv, srv.EnrollmentToken(t))
	st := n.open(t, time.Now)
	st.hello()
	start := time.Now()
	if _, err := srv.AdminClient().RevokeHost(context.Background(), connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id})); err != nil {
		t.Fatal(err)
	}
	st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, start, 5*time.Second)
	// The handler observes right after its Send; wait for it rather than sleep.
	deadline := time.Now().Add(5 * time.Second)
	for {
		body := scrape(t, srv)
		if metricValue(t, body, "aegis_edge_revocation_propagation_seconds_count") == "1" {
			sum, _ := strconv.ParseFloat(metricValue(t, body, "aegis_edge_revocation_propagation_seconds_sum"), 64)
			if sum < 0 || sum > 5 {
				t.Errorf("propagation %vs, want between 0 and the 5s the test waited", sum)
			}
			if got := metricValue(t, body, `aegis_rpc_duration_seconds_count{procedure="/aegis.edge.v1.EdgeAdminService/RevokeHost"}`); got != "1" {
				t.Errorf("RevokeHost latency observations = %s, want 1", got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("revocation propagation never observed")
		}
		code, _ := get(t, srv, "/healthz") // a round trip, not a sleep
		if code != http.StatusOK {
			t.Fatal("healthz")
		}
	}
}
