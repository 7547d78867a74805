package swarm_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/rotation"
	"github.com/aegis-edge/aegis/edged/testbed/swarm"
)

// serverHeartbeat is the control plane's heartbeat interval in these tests: long
// enough that many daemons cost little, short enough to notice a dead stream.
const serverHeartbeat = time.Second

func startServer(t testing.TB, opts cptest.Options) *cptest.Server {
	t.Helper()
	opts.HeartbeatInterval = serverHeartbeat
	return cptest.Start(t, opts)
}

// swarmOptions logs the daemons' warnings when SWARM_LOG is set (quiet otherwise).
func swarmOptions(t testing.TB) swarm.Options {
	var o swarm.Options
	if os.Getenv("SWARM_LOG") != "" {
		o.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return o
}

func within(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// serverConnected waits until the control plane lists every given daemon as
// CONNECTED (or, with want false, as not connected).
func serverConnected(t testing.TB, ctx context.Context, s *swarm.Swarm, want bool, ds ...*swarm.Daemon) {
	t.Helper()
	for {
		hosts, err := s.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ok := true
		for _, d := range ds {
			h := hosts[d.NodeID]
			if h == nil {
				t.Fatalf("%s (%s) is not in the host list", d.Name, d.NodeID)
			}
			if (h.GetStatus() == edgev1.HostStatus_HOST_STATUS_CONNECTED) != want {
				ok = false
			}
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %d hosts to be connected=%v in the server's view", len(ds), want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// keysAgree checks every daemon's node.key is the key the control plane holds.
func keysAgree(t testing.TB, ctx context.Context, ds ...*swarm.Daemon) {
	t.Helper()
	for _, d := range ds {
		local, err := d.KeyFingerprint()
		if err != nil {
			t.Fatal(err)
		}
		remote, err := d.ServerKeyFingerprint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if local != remote {
			t.Errorf("%s: node.key is %s, the control plane holds %s", d.Name, local, remote)
		}
	}
}

func TestSwarmEnrollsConnectsAndSteersDaemons(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		ctx := within(t, 60*time.Second)
		srv := startServer(t, opts)
		s := swarm.New(t, srv, swarmOptions(t))
		web := s.Add(t, 12, "web", "prod")
		db := s.Add(t, 4, "db")
		all := s.Daemons()
		if len(all) != 16 {
			t.Fatalf("%d daemons", len(all))
		}
		if err := s.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
		serverConnected(t, ctx, s, true, all...)

		// Each daemon has its own 0700 state dir and identity; the tags of its
		// enrollment token are the host's tags.
		hosts, err := s.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, d := range all {
			st, err := os.Stat(d.Dir.Path())
			if err != nil || st.Mode().Perm() != 0o700 {
				t.Fatalf("%s: state dir %v %v", d.Name, st.Mode(), err)
			}
			if seen[d.NodeID] || s.Daemon(d.NodeID) != d {
				t.Fatalf("%s: node id %s not unique or not indexed", d.Name, d.NodeID)
			}
			seen[d.NodeID] = true
			if got := d.Status(); got.NodeID != d.NodeID || got.SessionID == "" || got.Streams != 1 {
				t.Fatalf("%s: status %+v", d.Name, got)
			}
			if h := hosts[d.NodeID]; h.GetName() != d.Name {
				t.Fatalf("%s: listed as %q", d.Name, h.GetName())
			}
		}
		if tags := hosts[web[0].NodeID].GetTags(); !slices.Contains(tags, "web") || !slices.Contains(tags, "prod") {
			t.Fatalf("web host tags %v", tags)
		}
		if tags := hosts[db[0].NodeID].GetTags(); !slices.Equal(tags, []string{"db"}) {
			t.Fatalf("db host tags %v", tags)
		}

		// Stop one: it is Disconnected locally and on the server; the rest are not
		// touched. Start it again: it comes back with the same identity.
		off := web[3]
		session := web[4].Status().SessionID
		if err := off.Stop(); err != nil {
			t.Fatal(err)
		}
		if off.Running() || off.Status().Status != agent.StatusDisconnected {
			t.Fatalf("stopped daemon status %+v", off.Status())
		}
		serverConnected(t, ctx, s, false, off)
		if err := off.Start(); err != nil {
			t.Fatal(err)
		}
		if err := off.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
		serverConnected(t, ctx, s, true, off)
		if web[4].Status().SessionID != session {
			t.Fatal("stopping one daemon disturbed another's stream")
		}

		// Rotation through the live stream, as a fleet run sends it.
		r0 := web[0]
		before, _ := r0.KeyFingerprint()
		if err := srv.RequestKeyRotation(r0.NodeID, 0); err != nil {
			t.Fatal(err)
		}
		if err := r0.WaitStatus(ctx, func(st agent.Snapshot) bool { return st.Rotations == 1 }); err != nil {
			t.Fatal(err)
		}
		if after, _ := r0.KeyFingerprint(); after == before {
			t.Fatal("node.key did not change")
		}

		// A daemon whose rotation fails keeps its key; one that ignores commands
		// never starts one.
		failing, deaf := web[1], web[2]
		failing.FailRotation(rotation.StepNextKey)
		deaf.IgnoreCommands(true)
		fk, _ := failing.KeyFingerprint()
		dk, _ := deaf.KeyFingerprint()
		for _, d := range []*swarm.Daemon{failing, deaf} {
			if err := srv.RequestKeyRotation(d.NodeID, 0); err != nil {
				t.Fatal(err)
			}
		}
		waitIgnored(t, ctx, deaf, 1)
		// The failing rotation stops at S1, before anything reaches the server.
		time.Sleep(200 * time.Millisecond)
		if k, _ := failing.KeyFingerprint(); k != fk || failing.Status().Rotations != 0 {
			t.Fatal("a rotation failed at S1 changed the key")
		}
		if k, _ := deaf.KeyFingerprint(); k != dk || deaf.Status().Rotations != 0 {
			t.Fatal("a daemon ignoring commands rotated")
		}
		// Healed, both rotate on the next request, still on their first stream. The
		// rotation that failed after S1 left a request the daemon can resend; the
		// next rotation finishes it first, so that host rotates twice.
		failing.FailRotation(0)
		deaf.IgnoreCommands(false)
		want := map[string]int{r0.NodeID: 1, failing.NodeID: 2, deaf.NodeID: 1}
		for _, d := range []*swarm.Daemon{failing, deaf} {
			if err := srv.RequestKeyRotation(d.NodeID, 0); err != nil {
				t.Fatal(err)
			}
			if err := d.WaitStatus(ctx, func(st agent.Snapshot) bool { return st.Rotations == uint64(want[d.NodeID]) }); err != nil {
				t.Fatal(err)
			}
			if st := d.Status(); st.Streams != 1 || st.Status != agent.StatusConnected {
				t.Fatalf("%s after rotation: %+v", d.Name, st)
			}
		}
		keysAgree(t, ctx, all...)
		counts, err := s.Rotations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(counts) != len(want) {
			t.Fatalf("rotations %v, want %v", counts, want)
		}
		for n, c := range want {
			if counts[n] != c {
				t.Fatalf("rotations %v, want %v", counts, want)
			}
		}
	})
}

func waitIgnored(t testing.TB, ctx context.Context, d *swarm.Daemon, n int64) {
	t.Helper()
	for d.Ignored() < n {
		select {
		case <-ctx.Done():
			t.Fatalf("%s ignored %d commands, want %d", d.Name, d.Ignored(), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestSwarmSharedTransport(t *testing.T) {
	ctx := within(t, 30*time.Second)
	srv := startServer(t, cptest.Options{})
	o := swarmOptions(t)
	o.SharedTransport = true
	s := swarm.New(t, srv, o)
	ds := s.Add(t, 10)
	if err := s.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	// Stopping one daemon closes idle connections of the shared client, never the
	// others' streams.
	sessions := map[string]string{}
	for _, d := range ds {
		sessions[d.Name] = d.Status().SessionID
	}
	if err := ds[0].Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	for _, d := range ds[1:] {
		if st := d.Status(); st.SessionID != sessions[d.Name] || st.Status != agent.StatusConnected {
			t.Fatalf("%s: %+v", d.Name, st)
		}
	}
	if err := srv.RequestKeyRotation(ds[1].NodeID, 0); err != nil {
		t.Fatal(err)
	}
	if err := ds[1].WaitStatus(ctx, func(st agent.Snapshot) bool { return st.Rotations == 1 }); err != nil {
		t.Fatal(err)
	}
	keysAgree(t, ctx, ds...)
}

func TestSwarmStartTwiceRefused(t *testing.T) {
	srv := startServer(t, cptest.Options{})
	s := swarm.New(t, srv, swarm.Options{})
	d := s.Add(t, 1)[0]
	if err := d.Start(); err == nil {
		t.Fatal("a second Start of a running daemon was accepted")
	}
	if !errors.Is(d.Stop(), nil) {
		t.Fatal("stop")
	}
}
