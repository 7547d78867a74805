package rpc_test

import (
	"context"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

// A delayed write of an older stream (its session opened late, then closed) clears
// the row of a stream that is still live. The host must read Connected again within
// one heartbeat interval, not stay Disconnected while its daemon is talking.
func TestSessionRowHealsWithinOneHeartbeat(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		const hb = time.Second
		opts.HeartbeatInterval = hb
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		st := n.open(t, time.Now)
		st.hello()
		st.heartbeat()
		waitStatus(t, srv, n.id, edgev1.HostStatus_HOST_STATUS_CONNECTED)

		ctx := context.Background()
		if err := srv.Store.OpenSession(ctx, n.id, "s-older", "replica-gone", time.Now().Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := srv.Store.CloseSession(ctx, n.id, "s-older"); err != nil {
			t.Fatal(err)
		}
		faultEnded := time.Now()
		if got := hostStatus(t, srv, n.id); got != edgev1.HostStatus_HOST_STATUS_DISCONNECTED {
			t.Fatalf("status right after the session row was cleared = %s, want DISCONNECTED (the fault did not happen)", got)
		}
		// One heartbeat interval, plus room for a loaded machine.
		deadline := faultEnded.Add(hb + 2*time.Second)
		for hostStatus(t, srv, n.id) != edgev1.HostStatus_HOST_STATUS_CONNECTED {
			if time.Now().After(deadline) {
				t.Fatalf("host still %s %s after its live stream's session row was cleared", hostStatus(t, srv, n.id), time.Since(faultEnded))
			}
			st.heartbeat() // the daemon keeps talking meanwhile
			time.Sleep(100 * time.Millisecond)
		}
	})
}
