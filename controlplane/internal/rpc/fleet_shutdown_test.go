package rpc_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"google.golang.org/protobuf/types/known/durationpb"
)

// An operator watching a run must not hold the control plane's graceful shutdown
// open: the watch ends at once with Unavailable (the CLI re-attaches after the last
// sequence it printed) and the server stops well inside its shutdown timeout.
func TestFleetWatchEndsAtShutdown(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	startDaemon(t, srv, "w-1", ignore, "w")
	spec := rotateSpec("tags=AnyOf(w)")
	spec.Deadline = durationpb.New(time.Minute)
	id := startRun(t, srv.AdminClient(), spec).GetRun().GetId()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, err := srv.AdminClient().WatchFleetRun(ctx, connect.NewRequest(&edgev1.WatchFleetRunRequest{RunId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if !ws.Receive() { // run_started: the watch is attached and following
		t.Fatalf("no first event: %v", ws.Err())
	}

	start := time.Now()
	stopped := make(chan struct{})
	go func() { srv.Stop(); close(stopped) }()
	for ws.Receive() {
	}
	if code := connect.CodeOf(ws.Err()); code != connect.CodeUnavailable {
		t.Errorf("watch ended with %v, want Unavailable so the CLI re-attaches", ws.Err())
	}
	select {
	case <-stopped:
	case <-time.After(4 * time.Second):
		t.Fatal("the control plane did not stop within 4s: a watcher held the shutdown open")
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("shutdown took %s", took)
	}
}
