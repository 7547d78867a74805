package agent_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
)

var errCrash = errors.New("simulated crash")

// requireRotation skips only while the control plane answers RotateEdgeKey with
// Unimplemented (before its handler exists); any other answer runs the test.
func requireRotation(t *testing.T, srv *cptest.Server) {
	t.Helper()
	_, err := srv.ClusterClient().RotateEdgeKey(context.Background(), connect.NewRequest(&edgev1.SealNodeEnvelope{}))
	if connect.CodeOf(err) == connect.CodeUnimplemented {
		t.Skip("the control plane does not implement RotateEdgeKey yet")
	}
}

// cliHost is what aegisctl uses on a stopped host: a rotation.Host over its own client.
func cliHost(t *testing.T, srv *cptest.Server, dir *keystore.Dir, mod func(*rotation.Config), opts ...connect.ClientOption) *rotation.Host {
	t.Helper()
	cfg := rotation.Config{
		Dir:    dir,
		Client: edgev1connect.NewNodeClusterServiceClient(srv.HTTPClient(), srv.URL, opts...),
		Logger: testLogger(t),
	}
	if mod != nil {
		mod(&cfg)
	}
	return rotation.New(cfg)
}

// lostReply lets RotateEdgeKey reach the server and commit, then loses its reply;
// after that, while down is true, every call fails as if the network were gone.
type lostReply struct{ down bool }

func (l *lostReply) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if l.down {
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("network down"))
		}
		resp, err := next(ctx, req)
		if strings.HasSuffix(req.Spec().Procedure, "/RotateEdgeKey") {
			if err != nil {
				return nil, err
			}
			l.down = true
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("reply lost"))
		}
		return resp, err
	}
}

func (l *lostReply) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (l *lostReply) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

var archiveName = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\.key$`)

// healthy checks the state dir holds exactly one key, the one the server holds for
// the node, that it attests, and that nothing of a rotation is left behind.
func healthy(t *testing.T, srv *cptest.Server, dir *keystore.Dir, wantArchived int) ed25519.PrivateKey {
	t.Helper()
	node, err := dir.ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	key, err := dir.ReadKey()
	if err != nil {
		t.Fatal(err)
	}
	d, err := srv.Store.GetDaemon(context.Background(), node.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	fp := fingerprint.Of(key.Public().(ed25519.PublicKey))
	if got := fingerprint.Of(d.PublicKey); got != fp {
		t.Fatalf("node.key is %s, the server holds %s", fp, got)
	}
	if _, err := rotation.Attest(context.Background(), srv.ClusterClient(), node.NodeID, key, 5*time.Second, nil); err != nil {
		t.Fatalf("attest with node.key: %v", err)
	}
	tok, err := dir.ReadToken()
	if err != nil {
		t.Fatal(err)
	}
	if c, err := nodetoken.Peek(tok); err != nil || c.Cnf.KeyFingerprint != fp {
		t.Fatalf("node.token is bound to %q, node.key is %s (%v)", c.Cnf.KeyFingerprint, fp, err)
	}
	entries, err := os.ReadDir(dir.Path())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch n := e.Name(); {
		case n == keystore.KeyNextFile, n == keystore.TokenNextFile, n == keystore.RotationFile, strings.HasPrefix(n, ".tmp-"):
			t.Errorf("left behind: %s", n)
		}
	}
	archived, _ := os.ReadDir(dir.File(keystore.ArchiveDir))
	if len(archived) != wantArchived {
		var names []string
		for _, e := range archived {
			names = append(names, e.Name())
		}
		t.Fatalf("archive holds %v, want %d key(s)", names, wantArchived)
	}
	for _, e := range archived {
		if !archiveName.MatchString(e.Name()) {
			t.Errorf("archive file name %q", e.Name())
		}
		if fi, _ := e.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("archive file %s has mode %04o", e.Name(), fi.Mode().Perm())
		}
	}
	if fi, err := os.Stat(dir.File(keystore.ArchiveDir)); err == nil && fi.Mode().Perm() != 0o700 {
		t.Errorf("archive dir has mode %04o", fi.Mode().Perm())
	}
	return key
}

// A crash at every step of a rotation, and a lost reply, heal on the next start of
// the daemon: it ends Connected with exactly one key the server accepts.
func TestCrashAtEveryStepHealsOnRestart(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		opts.HeartbeatInterval = hb
		srv := cptest.Start(t, opts)
		requireRotation(t, srv)
		cases := []string{"lost-reply", "lost-reply-then-offline"}
		for _, s := range rotation.Steps {
			cases = append(cases, s.String())
		}
		for _, name := range cases {
			t.Run(name, func(t *testing.T) {
				dir := enrolled(t, srv)
				before, _ := dir.ReadKey()
				lr := &lostReply{}
				var copts []connect.ClientOption
				if strings.HasPrefix(name, "lost-reply") {
					copts = append(copts, connect.WithInterceptors(lr))
				}
				h := cliHost(t, srv, dir, func(c *rotation.Config) {
					c.Fault = func(s rotation.Step) error {
						if s.String() == name {
							return errCrash
						}
						return nil
					}
				}, copts...)
				_, err := h.Rotate(context.Background(), rotation.RotateOptions{})
				switch name {
				case "lost-reply":
					// The reply is lost and the network stays down: pending, old key.
					if !errors.Is(err, rotation.ErrPending) {
						t.Fatalf("Rotate with a lost reply: %v", err)
					}
					if k, _ := dir.ReadKey(); !k.Equal(before) {
						t.Fatal("node.key changed while the rotation's outcome was unknown")
					}
				case "lost-reply-then-offline":
					if !errors.Is(err, rotation.ErrPending) {
						t.Fatalf("Rotate with a lost reply: %v", err)
					}
					// Still offline at the next start: the daemon keeps the old key and
					// the pending rotation, then heals once the network is back.
					r := start(t, dir, func(c *agent.Config) { c.ClientOptions = []connect.ClientOption{connect.WithInterceptors(lr)} })
					time.Sleep(200 * time.Millisecond)
					if ok, _ := rotation.Pending(dir); !ok {
						t.Fatal("the pending rotation was dropped while the server could not be asked")
					}
					if k, _ := dir.ReadKey(); !k.Equal(before) {
						t.Fatal("node.key changed while the rotation's outcome was unknown")
					}
					r.stop()
				default:
					if !errors.Is(err, errCrash) {
						t.Fatalf("Rotate: %v, want the crash at %s", err, name)
					}
				}
				r := start(t, dir, nil)
				waitFor(t, "Connected after the restart", 10*time.Second, connected(r))
				key := healthy(t, srv, dir, 1)
				if key.Equal(before) {
					t.Fatal("the rotation was not finished: still the old key")
				}
				if fp := r.a.Status().KeyFingerprint; fp != rotation.FingerprintOf(key) {
					t.Fatalf("daemon reports %s, node.key is %s", fp, rotation.FingerprintOf(key))
				}
				// The old key is refused from now on.
				node, _ := dir.ReadNode()
				_, err = rotation.Attest(context.Background(), srv.ClusterClient(), node.NodeID, before, 5*time.Second, nil)
				if err == nil {
					t.Fatal("the pre-rotation key still attests")
				}
			})
		}
	})
}

// A rotation run by the daemon while heartbeats flow every 50 ms: the same stream
// carries on (no reconnect), every heartbeat is acknowledged, and the first envelope
// after the swap is under the new key.
func TestRotationKeepsTheStream(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		opts.HeartbeatInterval = hb
		srv := cptest.Start(t, opts)
		requireRotation(t, srv)
		dir := enrolled(t, srv)
		node, _ := dir.ReadNode()
		r := start(t, dir, nil)
		waitFor(t, "Connected", 5*time.Second, connected(r))
		waitFor(t, "a few acks", 2*time.Second, func() bool { return r.a.Status().Acked >= 3 })
		s0 := r.a.Status()
		res, err := r.a.RotateKeys(context.Background(), rotation.RotateOptions{KeepOld: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if res.NewKeyFingerprint == s0.KeyFingerprint || res.OldKeyFingerprint != s0.KeyFingerprint {
			t.Fatalf("result %+v, fingerprint before %s", res, s0.KeyFingerprint)
		}
		sent := r.a.Status().Sent
		waitFor(t, "acks under the new key", 3*time.Second, func() bool { return r.a.Status().Acked >= sent+3 })
		s1 := r.a.Status()
		if s1.SessionID != s0.SessionID || s1.Streams != s0.Streams || s1.Status != agent.StatusConnected {
			t.Fatalf("the rotation reconnected: before %+v after %+v", s0, s1)
		}
		if s1.KeyFingerprint != res.NewKeyFingerprint {
			t.Fatalf("status shows %s after rotating to %s", s1.KeyFingerprint, res.NewKeyFingerprint)
		}
		// Every heartbeat sent is acknowledged (acks are cumulative, in order).
		waitFor(t, "every heartbeat acked", 2*time.Second, func() bool { s := r.a.Status(); return s.Acked == s.Sent })
		healthy(t, srv, dir, 1)
		d, err := srv.Store.GetDaemon(context.Background(), node.NodeID)
		if err != nil {
			t.Fatal(err)
		}
		if d.KeyRotatedAt.IsZero() {
			t.Error("the server did not record key_rotated_at")
		}
	})
}

type serverTriggers interface {
	RequestTokenRefresh(nodeID string) error
	RequestKeyRotation(nodeID string, keepOld time.Duration) error
}

// The control plane asks for a token refresh and a key rotation on the live stream:
// both are swapped in without a reconnect.
func TestServerTriggeredRefreshAndRotation(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		opts.HeartbeatInterval = hb
		srv := cptest.Start(t, opts)
		trig, ok := any(srv).(serverTriggers)
		if !ok {
			t.Skip("cptest.Server has no RequestTokenRefresh/RequestKeyRotation yet")
		}
		requireRotation(t, srv)
		dir := enrolled(t, srv)
		node, _ := dir.ReadNode()
		r := start(t, dir, nil)
		waitFor(t, "Connected", 5*time.Second, connected(r))
		s0 := r.a.Status()
		tok0, _ := dir.ReadToken()
		if err := trig.RequestTokenRefresh(node.NodeID); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a new token on disk", 5*time.Second, func() bool { tok, _ := dir.ReadToken(); return tok != tok0 })
		sent := r.a.Status().Sent
		waitFor(t, "acks after the refresh", 2*time.Second, func() bool { return r.a.Status().Acked > sent })

		if err := trig.RequestKeyRotation(node.NodeID, 2*time.Hour); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the rotated key", 5*time.Second, func() bool { return r.a.Status().Rotations == 1 })
		sent = r.a.Status().Sent
		waitFor(t, "acks after the rotation", 2*time.Second, func() bool { return r.a.Status().Acked > sent })
		s1 := r.a.Status()
		if s1.SessionID != s0.SessionID || s1.Streams != s0.Streams {
			t.Fatalf("reconnected: before %+v after %+v", s0, s1)
		}
		healthy(t, srv, dir, 1)
		arch, err := rotation.New(rotation.Config{Dir: dir}).Archive()
		if err != nil || len(arch) != 1 || arch[0].DeleteAfter.Sub(arch[0].ArchivedAt) != 2*time.Hour {
			t.Fatalf("archive %+v %v, want one key kept 2h", arch, err)
		}
	})
}

// The daemon's own housekeeping deletes an archived key once the --keep-old chosen
// when it was archived has passed (here by the CLI on a stopped host), and keeps a
// young one.
func TestHousekeepingHonoursKeepOld(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	requireRotation(t, srv)
	dir := enrolled(t, srv)
	h := cliHost(t, srv, dir, nil)
	short, err := h.Rotate(context.Background(), rotation.RotateOptions{KeepOld: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // a distinct archive name, to the second
	long, err := h.Rotate(context.Background(), rotation.RotateOptions{KeepOld: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// The daemon starts two hours later (its clock, injected).
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	r := start(t, dir, func(c *agent.Config) { c.Now = later; c.HousekeepInterval = 20 * time.Millisecond })
	waitFor(t, "the 1h archive deleted", 3*time.Second, func() bool {
		_, err := os.Stat(short.ArchivedKey)
		return os.IsNotExist(err)
	})
	if _, err := os.Stat(long.ArchivedKey); err != nil {
		t.Fatalf("the 48h archive was deleted too: %v", err)
	}
	waitFor(t, "Connected", 5*time.Second, connected(r))
	if filepath.Dir(long.ArchivedKey) != dir.File(keystore.ArchiveDir) {
		t.Fatalf("archived at %s", long.ArchivedKey)
	}
}

// Revoke-remote: the stream is dropped with Disconnect{REVOKED}; the daemon stops for
// good and says how to re-enroll.
func TestRevokeRemoteStopsTheDaemon(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	r := start(t, dir, nil)
	waitFor(t, "Connected", 5*time.Second, connected(r))
	_, err := srv.AdminClient().RevokeHost(context.Background(), connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: node.NodeID}))
	// Until the handler lands the stub answers Unimplemented, and the permission
	// table (which lists only implemented procedures) refuses it first.
	if c := connect.CodeOf(err); c == connect.CodeUnimplemented || (c == connect.CodePermissionDenied && strings.Contains(err.Error(), "may not call RevokeHost")) {
		t.Skip("the control plane does not implement RevokeHost yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Revoked within a second", time.Second, func() bool { return r.a.Status().Status == agent.StatusRevoked })
	s := r.a.Status()
	if !strings.Contains(s.LastError, "aegis edge logout") || !strings.Contains(s.LastError, "aegis edge enroll") {
		t.Fatalf("no re-enroll hint: %q", s.LastError)
	}
	time.Sleep(300 * time.Millisecond)
	if s2 := r.a.Status(); s2.Streams != s.Streams || s2.Status != agent.StatusRevoked {
		t.Fatalf("kept trying after revocation: %+v", s2)
	}
	if _, err := r.a.RotateKeys(context.Background(), rotation.RotateOptions{}); !errors.Is(err, rotation.ErrRevoked) {
		t.Fatalf("rotate on a revoked host: %v", err)
	}
	// Logout still works on a revoked host, and leaves it ready to enroll again.
	if _, err := r.a.Logout(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, _ := dir.Enrolled(); ok {
		t.Fatal("still enrolled after logout")
	}
}

// Logout through the daemon: the server is told (the host shows Revoked), the state
// dir loses every key, token and archive, and the daemon waits for a new enrollment.
func TestLogout(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	r := start(t, dir, nil)
	waitFor(t, "Connected", 5*time.Second, connected(r))
	res, err := r.a.Logout(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.NodeID != node.NodeID {
		t.Fatalf("logout result %+v", res)
	}
	for _, f := range []string{keystore.KeyFile, keystore.TokenFile, keystore.NodeFile, keystore.ArchiveDir, keystore.RevokedFile} {
		if _, err := os.Stat(dir.File(f)); !os.IsNotExist(err) {
			t.Errorf("%s still there after logout", f)
		}
	}
	waitFor(t, "not enrolled", 2*time.Second, func() bool { s := r.a.Status(); return !s.Enrolled && s.Status == agent.StatusDisconnected })
	if res.ServerNotified {
		waitFor(t, "REVOKED in the host list", 3*time.Second, func() bool {
			return hostStatus(t, srv, node.NodeID) == edgev1.HostStatus_HOST_STATUS_REVOKED
		})
	}
	// The same daemon picks up a new enrollment.
	dir2 := dir.Path()
	if _, err := enrollInto(t, srv, dir2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Connected after re-enrolling", 5*time.Second, connected(r))
}

// An enrollment writes its files under the state-dir lock; a daemon waiting for it
// must not read them half written (node.json there, node.key not yet) and give up:
// it waits for the lock, then serves the finished identity. (The cause of TestLogout
// failing under load: the re-enrollment raced the daemon's poll.)
func TestDaemonWaitsForAnEnrollmentInProgress(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{HeartbeatInterval: hb})
	dir := enrolled(t, srv)
	unlock, err := dir.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Half written, as an enrollment in progress leaves it.
	if err := os.Rename(dir.File(keystore.KeyFile), dir.File("key.later")); err != nil {
		t.Fatal(err)
	}
	r := start(t, dir, nil)
	waitFor(t, "the daemon to see the enrollment in progress", 5*time.Second, func() bool {
		return strings.Contains(r.a.Status().LastError, "an enrollment or key rotation is in progress")
	})
	// The enrollment finishes and lets go of the directory.
	if err := os.Rename(dir.File("key.later"), dir.File(keystore.KeyFile)); err != nil {
		t.Fatal(err)
	}
	unlock()
	waitFor(t, "Connected once the enrollment finished", 5*time.Second, connected(r))
	if err := r.stop(); err != nil {
		t.Fatalf("agent ended with %v", err)
	}
}
