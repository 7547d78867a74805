package agent_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/controlplane/cptest"
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
		d, err := srv.Store.GetDaemon(context.Background(), node.NodeID)
		if err != nil {
			t.Fatal(err)
		}
		committed := fingerprint.Of(d.PublicKey)

		res, err := cliHost(t, srv, dir, nil).Rotate(context.Background(), rotation.RotateOptions{FleetRunID: "fr-0123456789abcdef"})
		if err != nil {
			t.Fatalf("fleet Rotate over a pending rotation: %v", err)
		}
		if res.NewKeyFingerprint != committed {
			t.Fatalf("fleet Rotate reports key %s, want the pending rotation's %s", res.NewKeyFingerprint, committed)
		}
		rs, err := srv.Store.ListNodeRotations(context.Background(), node.NodeID)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 1 {
			t.Fatalf("the server recorded %d rotations, want 1 (the host rotated twice)", len(rs))
		}
		key := healthy(t, srv, dir, 1)
		if fingerprint.Of(key.Public().(ed25519.PublicKey)) != committed {
			t.Fatal("node.key is not the key the server committed")
		}
	})
}
