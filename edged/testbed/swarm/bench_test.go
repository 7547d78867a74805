package swarm_test

import (
	"context"
	"flag"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/testbed/swarm"
	"google.golang.org/protobuf/types/known/durationpb"
)

var (
	benchHosts     = flag.Int("swarm.hosts", 0, "daemons in the fleet benchmarks (default $SWARM_HOSTS, else 200)")
	benchShared    = flag.Bool("swarm.shared", false, "daemons share one HTTP/2 transport instead of one connection each")
	benchHeartbeat = flag.Duration("swarm.heartbeat", 5*time.Second, "the control plane's heartbeat interval in the fleet benchmarks")
)

func benchSize(b *testing.B) int {
	if *benchHosts > 0 {
		return *benchHosts
	}
	if v := os.Getenv("SWARM_HOSTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("SWARM_HOSTS=%q is not a positive number", v)
		}
		return n
	}
	return 200
}

// BenchmarkFleetRotateRolling100 times a keys.rotate fleet run, rolling=100, over N
// in-process daemons on SQLite (or the PostgreSQL database SWARM_BENCH_DATABASE_URL
// names; it must be a scratch database). It prints figures for scale work and
// asserts nothing about time. N: -swarm.hosts or $SWARM_HOSTS (default 200).
//
//	go test -run - -bench FleetRotate -swarm.hosts=1000 ./edged/testbed/swarm
func BenchmarkFleetRotateRolling100(b *testing.B) {
	n := benchSize(b)
	ctx := context.Background()
	srv := cptest.Start(b, cptest.Options{HeartbeatInterval: *benchHeartbeat, DatabaseURL: os.Getenv("SWARM_BENCH_DATABASE_URL")})
	_, err := srv.AdminClient().GetFleetRun(ctx, connect.NewRequest(&edgev1.GetFleetRunRequest{RunId: "fr-none"}))
	if connect.CodeOf(err) == connect.CodeUnimplemented {
		b.Skip("the control plane does not implement fleet runs yet")
	}

	var m0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	s := swarm.New(b, srv, swarm.Options{SharedTransport: *benchShared, EnrollConcurrency: 16})
	start := time.Now()
	if _, err := s.Enroll(ctx, n, "bench"); err != nil {
		b.Fatal(err)
	}
	enrolled := time.Since(start)
	for _, d := range s.Daemons() {
		if err := d.Start(); err != nil {
			b.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := s.WaitConnected(wctx); err != nil {
		b.Fatal(err)
	}
	connected := time.Since(start) - enrolled
	var m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m1)
	b.Logf("%d daemons: enrolled in %v (%.1f/s, %d retries on the challenge rate limit), all Connected %v later; heap %.1f MiB (%.0f KiB per daemon), %d goroutines",
		n, enrolled.Round(time.Millisecond), float64(n)/enrolled.Seconds(), s.Throttled(), connected.Round(time.Millisecond),
		float64(m1.HeapInuse)/(1<<20), float64(int64(m1.HeapInuse)-int64(m0.HeapInuse))/1024/float64(n), runtime.NumGoroutine())

	spec := &edgev1.FleetRunSpec{
		Action: edgev1.FleetAction_FLEET_ACTION_KEYS_ROTATE, Target: "tags=AnyOf(bench)",
		Mode: edgev1.FleetMode_FLEET_MODE_ROLLING, Batch: 100, Deadline: durationpb.New(2 * time.Minute),
	}
	runs := 0
	var total time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		res, err := s.RunFleet(wctx, spec, nil)
		if err != nil {
			b.Fatal(err)
		}
		took := time.Since(t0)
		total += took
		runs++
		c := res.Final.GetRun().GetCounts()
		b.Logf("run %d: %v over %d hosts in %d waves: %v, %.1f hosts/s", runs, res.Final.GetRun().GetState(), c.GetTotal(),
			len(res.Final.GetPlan().GetWaves()), took.Round(time.Millisecond), float64(c.GetTotal())/took.Seconds())
		if c.GetSucceeded() != int32(n) {
			b.Fatalf("counts %v", c)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(n)*float64(runs)/total.Seconds(), "hosts/s")
	b.ReportMetric(float64(n), "hosts")
}
