package agent_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
)

// A host whose rotation was left pending (the server committed it, the host
// crashed before swapping the key in) is asked by a fleet run to rotate: it
// finishes the pending rotation and reports that one as the run's, instead of
// rotating a second time.
func TestFleetRotateFinishesAPendingRotation(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		requireRotation(t, srv)
		dir := enrolled(t, srv)
		node, _ := dir.ReadNode()

		committed := leavePending(t, srv, dir)

		res, err := cliHost(t, srv, dir, nil).Rotate(context.Background(), rotation.RotateOptions{FleetRunID: "fr-0123456789abcdef"})
		if err != nil {
			t.Fatalf("fleet Rotate over a pending rotation: %v", err)
		}
		if res.NewKeyFingerprint != committed {
			t.Fatalf("fleet Rotate reports key %s, want the pending rotation's %s", res.NewKeyFingerprint, committed)
		}
		if n := rotationsRecorded(t, srv, node.NodeID); n != 1 {
			t.Fatalf("the server recorded %d rotations, want 1 (the host rotated twice)", n)
		}
		key := healthy(t, srv, dir, 1)
		if fingerprint.Of(key.Public().(ed25519.PublicKey)) != committed {
			t.Fatal("node.key is not the key the server committed")
		}
	})
}

// The daemon's scheduler decides to rotate a key, then waits for the state dir's
// lock while the stream's reconcile finishes a pending rotation (the key changes
// under it). The routine rotation asked only for the key it saw (IfKey): it reports
// the pending rotation as its own instead of rotating the new key a second time.
func TestRoutineRotateFinishesAPendingRotation(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	requireRotation(t, srv)
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	oldFP := keyFingerprint(t, dir)

	committed := leavePending(t, srv, dir)
	res, err := cliHost(t, srv, dir, nil).Rotate(context.Background(), rotation.RotateOptions{IfKey: oldFP})
	if err != nil {
		t.Fatalf("routine Rotate over a pending rotation: %v", err)
	}
	if res.OldKeyFingerprint != oldFP || res.NewKeyFingerprint != committed {
		t.Errorf("the result says it replaced %s with %s, want %s with the pending %s", res.OldKeyFingerprint, res.NewKeyFingerprint, oldFP, committed)
	}
	if n := rotationsRecorded(t, srv, node.NodeID); n != 1 {
		t.Fatalf("the server recorded %d rotations, want 1 (the host rotated twice)", n)
	}
	healthy(t, srv, dir, 1)
}

// The key the scheduler saw was already replaced (a reconcile on reconnect, or
// `aegis edge keys rotate`, got the lock first): the routine rotation does nothing
// and says so with ErrKeyChanged; the server records no second rotation.
func TestRoutineRotateOfAReplacedKeyDoesNothing(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	requireRotation(t, srv)
	dir := enrolled(t, srv)
	node, _ := dir.ReadNode()
	oldFP := keyFingerprint(t, dir)
	first, err := cliHost(t, srv, dir, nil).Rotate(context.Background(), rotation.RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cliHost(t, srv, dir, nil).Rotate(context.Background(), rotation.RotateOptions{IfKey: oldFP})
	if !errors.Is(err, rotation.ErrKeyChanged) {
		t.Fatalf("Rotate of the replaced key: %v, want ErrKeyChanged", err)
	}
	if n := rotationsRecorded(t, srv, node.NodeID); n != 1 {
		t.Fatalf("the server recorded %d rotations, want 1", n)
	}
	key := healthy(t, srv, dir, 1)
	if fingerprint.Of(key.Public().(ed25519.PublicKey)) != first.NewKeyFingerprint {
		t.Fatal("node.key is not the first rotation's key")
	}
	// The key it names is the current one: it rotates.
	second, err := cliHost(t, srv, dir, nil).Rotate(context.Background(), rotation.RotateOptions{IfKey: first.NewKeyFingerprint})
	if err != nil {
		t.Fatalf("Rotate of the current key: %v", err)
	}
	if second.OldKeyFingerprint != first.NewKeyFingerprint || second.NewKeyFingerprint == first.NewKeyFingerprint {
		t.Fatalf("the second rotation replaced %s with %s, want a new key for %s", second.OldKeyFingerprint, second.NewKeyFingerprint, first.NewKeyFingerprint)
	}
	if n := rotationsRecorded(t, srv, node.NodeID); n != 2 {
		t.Fatalf("the server recorded %d rotations, want 2", n)
	}
}

// leavePending crashes a rotation right after the server committed it (the host
// never swapped the key in) and returns the fingerprint the server now holds.
func leavePending(t *testing.T, srv *cptest.Server, dir *keystore.Dir) string {
	t.Helper()
	crashing := cliHost(t, srv, dir, func(c *rotation.Config) {
		c.Fault = func(s rotation.Step) error {
			if s == rotation.StepTokenNext {
				return errCrash
			}
			return nil
		}
	})
	if _, err := crashing.Rotate(context.Background(), rotation.RotateOptions{}); !errors.Is(err, errCrash) {
		t.Fatalf("Rotate: %v, want the crash after the commit", err)
	}
	node, err := dir.ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := srv.Store.GetDaemon(context.Background(), node.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	return fingerprint.Of(d.PublicKey)
}

// keyFingerprint is the fingerprint of the host's node.key.
func keyFingerprint(t *testing.T, dir *keystore.Dir) string {
	t.Helper()
	key, err := dir.ReadKey()
	if err != nil {
		t.Fatal(err)
	}
	return fingerprint.Of(key.Public().(ed25519.PublicKey))
}

func rotationsRecorded(t *testing.T, srv *cptest.Server, nodeID string) int {
	t.Helper()
	rs, err := srv.Store.ListNodeRotations(context.Background(), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	return len(rs)
}
