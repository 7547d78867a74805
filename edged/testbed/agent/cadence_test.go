package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/enroll"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
	"google.golang.org/protobuf/types/known/durationpb"
)

// slowTicker prints "tick N" every half second, 20 times: a 10-second cmd.run.
const slowTicker = "i=1; while [ $i -le 20 ]; do echo tick $i; i=$((i+1)); sleep 0.5; done\n"

func slowTickerOutput() string {
	var b strings.Builder
	for i := 1; i <= 20; i++ {
		b.WriteString("tick " + strconv.Itoa(i) + "\n")
	}
	return b.String()
}

func serverFingerprint(t *testing.T, srv *cptest.Server, nodeID string) string {
	t.Helper()
	h, err := srv.AdminClient().GetHost(context.Background(), connect.NewRequest(&edgev1.GetHostRequest{NodeId: nodeID}))
	if err != nil {
		t.Fatal(err)
	}
	return h.Msg.GetHost().GetKeyFingerprint()
}

// A policy of 10s on a tag, set while the daemons run: the selected host rotates by
// itself (nobody asks it to) on the same stream, in the middle of a 10-second
// cmd.run that completes with its full output; the host outside the selector keeps
// its key.
func TestPolicyRotatesSelectedHostsByThemselves(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	requireRotation(t, srv)

	dirA := filepath.Join(t.TempDir(), "edge")
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t, "prod"), StateDir: dirA, Name: "prod-1"}); err != nil {
		t.Fatal(err)
	}
	enrolledAt := time.Now()
	node, err := keystore.Open(dirA).ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	scripts, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ra := start(t, keystore.Open(dirA), func(c *agent.Config) { c.Policy = testPolicy(t, scripts) })
	waitFor(t, "prod-1 Connected", 5*time.Second, connected(ra))
	a := &toolHost{srv: srv, r: ra, nodeID: node.NodeID, scripts: scripts}
	a.setContext(t, "ops", true)
	b := addToolHost(t, srv, nil) // no tags: outside the selector

	beforeA, beforeB := ra.a.Status(), b.r.a.Status()
	resp, err := srv.AdminClient().SetRotationPolicy(context.Background(), connect.NewRequest(&edgev1.SetRotationPolicyRequest{
		Name: "prod-fast", Target: "tags=AnyOf(prod)", MaxKeyAge: durationpb.New(10 * time.Second),
	}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.GetPolicy().GetHostsSelected() != 1 {
		t.Fatalf("policy selects %d hosts, want 1", resp.Msg.GetPolicy().GetHostsSelected())
	}
	waitFor(t, "prod-1 to learn the policy", 5*time.Second, func() bool { return ra.a.Status().MaxKeyAge == 10*time.Second })
	st := ra.a.Status()
	if st.KeyDueAt.IsZero() || st.NextRotationAt.Before(st.KeyDueAt.Add(-time.Second)) || !st.NextRotationAt.Before(st.KeyDueAt) {
		t.Fatalf("plan: due %v, next rotation %v (want in the second before due)", st.KeyDueAt, st.NextRotationAt)
	}
	if b.r.a.Status().MaxKeyAge != 0 {
		t.Fatalf("the untagged host has max key age %v", b.r.a.Status().MaxKeyAge)
	}

	// The call starts about 5s into the key's life and runs 10s; the rotation is due
	// between 9s and 10s.
	waitFor(t, "the key to be 5s old", 10*time.Second, func() bool { return time.Since(enrolledAt) >= 5*time.Second })
	ticker := a.script(t, "slow.sh", slowTicker)
	e := a.exec(t, context.Background(), 60*time.Second, nil, ticker)
	if e.err != nil || e.result == nil || !e.result.GetOk() || e.stdout() != slowTickerOutput() {
		t.Fatalf("exec: err %v, result %v, output %q", e.err, e.result, e.stdout())
	}
	after := ra.a.Status()
	if after.Rotations < 1 || after.KeyFingerprint == beforeA.KeyFingerprint {
		t.Fatalf("prod-1 did not rotate during the call: rotations %d", after.Rotations)
	}
	if after.SessionID != beforeA.SessionID || after.Streams != beforeA.Streams {
		t.Fatalf("the stream was re-established: before %s/%d, after %s/%d", beforeA.SessionID, beforeA.Streams, after.SessionID, after.Streams)
	}
	waitFor(t, "the control plane to hold prod-1's new key", 5*time.Second, func() bool {
		return serverFingerprint(t, srv, node.NodeID) == ra.a.Status().KeyFingerprint
	})
	if got := hostStatus(t, srv, node.NodeID); got != edgev1.HostStatus_HOST_STATUS_CONNECTED {
		t.Errorf("prod-1 is %v after its routine rotation", got)
	}
	if b.r.a.Status().KeyFingerprint != beforeB.KeyFingerprint || b.r.a.Status().Rotations != 0 || serverFingerprint(t, srv, b.nodeID) != beforeB.KeyFingerprint {
		t.Error("the host outside the selector rotated")
	}
}

// The local rotation.max_key_age alone drives routine rotation (no policy at all),
// and a daemon started after its key fell due rotates soon after it connects.
func TestLocalMaxKeyAgeAndADaemonStartedLate(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	requireRotation(t, srv)
	dir := enrolled(t, srv)
	node, err := dir.ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	before := serverFingerprint(t, srv, node.NodeID)
	// The key is made; the daemon is off for longer than its max age.
	fi, err := os.Stat(dir.File(keystore.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the key to pass its 1s max age", 5*time.Second, func() bool { return time.Since(fi.ModTime()) > 1500*time.Millisecond })
	r := start(t, dir, func(c *agent.Config) { c.MaxKeyAge = time.Second })
	waitFor(t, "the daemon to see its key overdue", 5*time.Second, func() bool {
		s := r.a.Status()
		return !s.KeyDueAt.IsZero() && s.KeyDueAt.Before(time.Now()) || s.Rotations >= 1
	})
	waitFor(t, "a routine rotation soon after start", 45*time.Second, func() bool { return r.a.Status().Rotations >= 1 })
	waitFor(t, "the control plane to hold the new key", 5*time.Second, func() bool {
		return serverFingerprint(t, srv, node.NodeID) != before
	})
}

func serverHost(t *testing.T, srv *cptest.Server, nodeID string) *edgev1.Host {
	t.Helper()
	h, err := srv.AdminClient().GetHost(context.Background(), connect.NewRequest(&edgev1.GetHostRequest{NodeId: nodeID}))
	if err != nil {
		t.Fatal(err)
	}
	return h.Msg.GetHost()
}

// A host that cannot reach the control plane when its key falls due is shown
// overdue, keeps its old key (the control plane still holds it), reports why it could
// not rotate, and rotates once it can reach the control plane again.
func TestOverdueWhileUnreachableThenRotates(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	requireRotation(t, srv)
	dir := filepath.Join(t.TempDir(), "edge")
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t, "prod"), StateDir: dir, Name: "cut-1"}); err != nil {
		t.Fatal(err)
	}
	node, err := keystore.Open(dir).ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	cut := &netCut{}
	r := start(t, keystore.Open(dir), func(c *agent.Config) { c.HTTPClient = cut.client })
	waitFor(t, "Connected", 5*time.Second, connected(r))
	before := r.a.Status().KeyFingerprint

	if _, err := srv.AdminClient().SetRotationPolicy(context.Background(), connect.NewRequest(&edgev1.SetRotationPolicyRequest{
		Name: "prod", Target: "tags=AnyOf(prod)", MaxKeyAge: durationpb.New(10 * time.Second),
	})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the daemon to learn the policy", 5*time.Second, func() bool { return r.a.Status().MaxKeyAge == 10*time.Second })
	cut.set(true)
	waitFor(t, "the stream to drop", 5*time.Second, func() bool { return r.a.Status().Status != agent.StatusConnected })

	waitFor(t, "the control plane to show the host overdue", 30*time.Second, func() bool { return serverHost(t, srv, node.NodeID).GetOverdue() })
	waitFor(t, "the daemon to report the failed attempt", 10*time.Second, func() bool { return r.a.Status().RotationError != "" })
	if s := r.a.Status(); s.KeyFingerprint != before || s.Rotations != 0 {
		t.Fatalf("the key changed while unreachable: %s (was %s), rotations %d", s.KeyFingerprint, before, s.Rotations)
	}
	if got := serverHost(t, srv, node.NodeID).GetKeyFingerprint(); got != before {
		t.Fatalf("the control plane holds %s, want the old key %s", got, before)
	}

	cut.set(false)
	waitFor(t, "a rotation once reachable", 30*time.Second, func() bool { return r.a.Status().Rotations >= 1 })
	waitFor(t, "Connected with the new key, not overdue", 10*time.Second, func() bool {
		h := serverHost(t, srv, node.NodeID)
		s := r.a.Status()
		return s.Status == agent.StatusConnected && h.GetKeyFingerprint() == s.KeyFingerprint && h.GetKeyFingerprint() != before && !h.GetOverdue()
	})
	// The scheduler replans for the new key when the swap wakes it; the old key's
	// failure is gone then, and the key the control plane holds was rotated once
	// (a due key gets one rotation, whichever path finished it).
	waitFor(t, "the failure to stop being reported after the rotation", 5*time.Second, func() bool { return r.a.Status().RotationError == "" })
	if n, s := rotationsRecorded(t, srv, node.NodeID), r.a.Status(); n != int(s.Rotations) {
		t.Errorf("the server recorded %d rotations, the daemon made %d", n, s.Rotations)
	}
}

// edged started before the host enrolled: once enrolled, its local max key age
// schedules the new key's rotation (nothing else wakes the scheduler but the stream).
func TestLocalMaxKeyAgeAfterEnrollingUnderARunningDaemon(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	requireRotation(t, srv)
	dir := filepath.Join(t.TempDir(), "edge")
	kd := keystore.Open(dir)
	if err := kd.Create(); err != nil {
		t.Fatal(err)
	}
	r := start(t, kd, func(c *agent.Config) { c.MaxKeyAge = 2 * time.Second })
	if _, err := enrollInto(t, srv, dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Connected", 5*time.Second, connected(r))
	waitFor(t, "a plan for the new key", 5*time.Second, func() bool { return !r.a.Status().NextRotationAt.IsZero() })
	waitFor(t, "a routine rotation", 30*time.Second, func() bool { return r.a.Status().Rotations >= 1 })
}

// The host's own rotation.max_key_age reaches the control plane in its Hello: under
// a 90d policy, a host whose local maximum is 8s is shown due 8s after its key was
// made (hosts list and host page), and overdue once its key is older while it cannot
// rotate (cut off the network, so the daemon's own rotation cannot clear it).
func TestLocalMaxKeyAgeSmallerThanPolicyOnTheControlPlane(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	requireRotation(t, srv)
	if _, err := srv.AdminClient().SetRotationPolicy(context.Background(), connect.NewRequest(&edgev1.SetRotationPolicyRequest{
		Name: "prod", Target: "tags=AnyOf(prod)", MaxKeyAge: durationpb.New(90 * 24 * time.Hour),
	})); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "edge")
	if _, err := enroll.Enroll(context.Background(), enroll.Options{Token: srv.EnrollmentToken(t, "prod"), StateDir: dir, Name: "local-1"}); err != nil {
		t.Fatal(err)
	}
	node, err := keystore.Open(dir).ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	const local = 8 * time.Second
	cut := &netCut{}
	r := start(t, keystore.Open(dir), func(c *agent.Config) { c.HTTPClient = cut.client; c.MaxKeyAge = local })
	waitFor(t, "Connected", 5*time.Second, connected(r))

	h := serverHost(t, srv, node.NodeID)
	want := h.GetEnrolledAt().AsTime().Add(local)
	if got := h.GetKeyDueAt().AsTime(); !got.Equal(want) || h.GetOverdue() {
		t.Fatalf("host page: key_due_at %v overdue %v, want %v (enrolled + the local 8s, not + 90d)", got, h.GetOverdue(), want)
	}
	list, err := srv.AdminClient().ListHosts(context.Background(), connect.NewRequest(&edgev1.ListHostsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, lh := range list.Msg.GetHosts() {
		if lh.GetNodeId() == node.NodeID && !lh.GetKeyDueAt().AsTime().Equal(want) {
			t.Fatalf("hosts list: key_due_at %v, want %v", lh.GetKeyDueAt().AsTime(), want)
		}
	}
	cut.set(true)
	waitFor(t, "the stream to drop", 5*time.Second, func() bool { return r.a.Status().Status != agent.StatusConnected })
	waitFor(t, "the control plane to show the host overdue by its own maximum", 30*time.Second, func() bool {
		return serverHost(t, srv, node.NodeID).GetOverdue()
	})
	if r.a.Status().Rotations != 0 {
		t.Fatal("the host rotated although it was cut off")
	}
}
