package rpc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
)

// threeReplicas starts three control planes on one PostgreSQL schema.
func threeReplicas(t *testing.T) []*cptest.Server {
	t.Helper()
	a := cptest.Start(t, cptest.Options{DatabaseURL: pgtest.Fresh(t, pgtest.URL(t))})
	return []*cptest.Server{a, a.StartReplica(t, cptest.Options{}), a.StartReplica(t, cptest.Options{})}
}

// startDaemonOn enrolls a host through enrollVia and keeps its stream on streamOn.
func startDaemonOn(t *testing.T, enrollVia, streamOn *cptest.Server, name string, tags ...string) *simDaemon {
	t.Helper()
	n := enrollNamed(t, enrollVia, name, tags...)
	n.client = streamOn.ClusterClient()
	d := &simDaemon{t: t, srv: streamOn, name: name, behave: obey, n: n, rotated: map[string]bool{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go d.loop(ctx)
	t.Cleanup(func() { cancel(); <-d.done })
	waitStatus(t, enrollVia, n.id, edgev1.HostStatus_HOST_STATUS_CONNECTED)
	return d
}

// A fleet keys.rotate started on A rotates every host, whichever replica holds its
// stream: the command crosses to that replica, which verifies the envelope under
// the new key and tells A. No host is rotated twice.
func TestReplicasFleetRotateAcrossReplicas(t *testing.T) {
	rs := threeReplicas(t)
	var daemons []*simDaemon
	for i := range 6 {
		daemons = append(daemons, startDaemonOn(t, rs[0], rs[i%3], fmt.Sprintf("edge-%02d", i), "edge"))
	}
	// hosts list through any replica tells the truth about every host.
	for _, r := range rs {
		for _, d := range daemons {
			if got := hostStatus(t, r, d.nodeID()); got != edgev1.HostStatus_HOST_STATUS_CONNECTED {
				t.Fatalf("%s through replica %s: %s, want CONNECTED", d.name, r.URL, got)
			}
		}
	}

	c := rs[0].AdminClient()
	started := startRun(t, c, rotateSpec("tags=AnyOf(edge)"))
	events := watch(t, c, started.GetRun().GetId(), 0)
	got := results(events)
	for _, d := range daemons {
		expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "")
		if n := rotationRows(t, rs[0], d.nodeID()); n != 1 {
			t.Fatalf("%s has %d rotations, want 1", d.name, n)
		}
	}
	fin := events[len(events)-1].GetRunFinished().GetRun()
	if fin.GetState() != edgev1.FleetRunState_FLEET_RUN_STATE_SUCCEEDED || fin.GetCounts().GetSucceeded() != 6 {
		t.Fatalf("finished run = %v", fin)
	}
}

// A fleet token refresh started on B refreshes hosts connected to A and C.
func TestReplicasFleetRefreshAcrossReplicas(t *testing.T) {
	rs := threeReplicas(t)
	var daemons []*simDaemon
	for i := range 4 {
		daemons = append(daemons, startDaemonOn(t, rs[1], rs[[]int{0, 2}[i%2]], fmt.Sprintf("db-%02d", i), "db"))
	}
	c := rs[1].AdminClient()
	started := startRun(t, c, &edgev1.FleetRunSpec{Action: edgev1.FleetAction_FLEET_ACTION_TOKEN_REFRESH, Target: "tags=AnyOf(db)"})
	got := results(watch(t, c, started.GetRun().GetId(), 0))
	for _, d := range daemons {
		expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "")
	}
}

// A security-context change made through A refreshes the host where it is
// connected (B): the stream there is told, and the host's next token carries it.
func TestReplicasSecurityContextRefreshAcrossReplicas(t *testing.T) {
	rs := threeReplicas(t)
	d := startDaemonOn(t, rs[0], rs[1], "app-0", "app")
	d.mu.Lock()
	before := d.n.token
	d.mu.Unlock()

	resp, err := rs[0].AdminClient().SetHostSecurityContext(context.Background(), connect.NewRequest(&edgev1.SetHostSecurityContextRequest{
		NodeId: d.nodeID(), SecurityContext: "ops", RefreshNow: true}))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Msg.GetRefreshSent() {
		t.Fatalf("refresh_sent false for a host connected to another replica: %v", resp.Msg)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		d.mu.Lock()
		tok := d.n.token
		d.mu.Unlock()
		if tok != before {
			if c := peekToken(t, tok); c.SecurityContext != "ops" {
				t.Fatalf("refreshed token names security context %q, want ops", c.SecurityContext)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the host on B did not refresh its token after the change through A")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The replica driving a fleet run goes away mid-run: another takes the run's lease
// once it lapses and finishes it, and no host is rotated twice.
func TestReplicasFleetRunSurvivesItsDriver(t *testing.T) {
	dbURL := pgtest.Fresh(t, pgtest.URL(t))
	opts := cptest.Options{DatabaseURL: dbURL, FleetLeaseDuration: time.Second, FleetResumeGrace: 2 * time.Second}
	a := cptest.Start(t, opts)
	opts.DatabaseURL = ""
	b := a.StartReplica(t, opts)
	c := a.StartReplica(t, opts)
	var daemons []*simDaemon
	for i := range 8 {
		d := startDaemonOn(t, b, []*cptest.Server{b, c}[i%2], fmt.Sprintf("svc-%02d", i), "svc")
		d.delay = 300 * time.Millisecond
		daemons = append(daemons, d)
	}

	started := startRun(t, a.AdminClient(), rotateSpec("tags=AnyOf(svc)"))
	id := started.GetRun().GetId()
	// Watch through B, which outlives A.
	watched := make(chan []*edgev1.FleetEvent, 1)
	go func() { watched <- watch(t, b.AdminClient(), id, 0) }()

	// A drives the first wave; stop it once the run is under way.
	deadline := time.Now().Add(20 * time.Second)
	for {
		hs, err := b.Store.ListFleetRunHosts(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, h := range hs {
			if h.State == store.FleetHostSucceeded {
				done++
			}
		}
		if done > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no host finished under the first driver")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.Stop()

	var events []*edgev1.FleetEvent
	select {
	case events = <-watched:
	case <-time.After(45 * time.Second):
		t.Fatal("the run did not finish after its driver went away")
	}
	got := results(events)
	for _, d := range daemons {
		expectHost(t, got, d.nodeID(), edgev1.FleetHostState_FLEET_HOST_STATE_SUCCEEDED, "")
		if n := rotationRows(t, b, d.nodeID()); n != 1 {
			t.Fatalf("%s has %d rotations, want exactly 1", d.name, n)
		}
	}
}
