package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// A Welcome tells the daemon the server's time as it is sent, not as it was when the
// stream arrived. In a reconnect storm thousands of streams queue for their session
// write; one that waited longer than the allowed clock skew would otherwise learn a
// clock behind by its wait, stamp its next envelopes with it, be refused
// clock_skew, and re-attest: a storm of attestations on top of the storm.
func TestWelcomeCarriesTheTimeItIsSent(t *testing.T) {
	clock := newFakeClock()
	srv := cptest.Start(t, cptest.Options{Now: clock.Now, MaxClockSkew: time.Minute})
	n := enroll(t, srv, srv.EnrollmentToken(t))

	// Hold the store's writer, so the stream's session write has to wait.
	inside, release := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- srv.Store.InTx(context.Background(), func(store.Tx) error {
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	st := n.open(t, clock.Now)
	st.send(st.envelope(hello(), nil))
	// Registered (connected) means past admission and verification, with its
	// arrival time taken: now it waits on the write.
	deadline := time.Now().Add(15 * time.Second)
	for metricValue(t, scrape(t, srv), "aegis_edge_connected_daemons") != "1" {
		if time.Now().After(deadline) {
			t.Fatal("the stream never registered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	clock.Advance(90 * time.Second) // the write took longer than the allowed skew
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}

	cmd, err := st.recv()
	if err != nil {
		t.Fatalf("expected Welcome: %v", err)
	}
	w := cmd.GetWelcome()
	if w == nil {
		t.Fatalf("expected Welcome, got %v", cmd)
	}
	if got := w.GetServerTime().AsTime(); got.Before(clock.Now()) {
		t.Fatalf("Welcome server_time %s is %s behind the server's clock at sending", got, clock.Now().Sub(got))
	}
	// A daemon stamps its envelopes with the server time it learned: its first
	// heartbeat is accepted, not refused clock_skew.
	st.now = func() time.Time { return w.GetServerTime().AsTime() }
	st.heartbeat()
	if got := metricValue(t, scrape(t, srv), `aegis_edge_envelope_rejections_total{reason="clock_skew"}`); got != "0" {
		t.Fatalf("clock_skew rejections: %s", got)
	}
}
