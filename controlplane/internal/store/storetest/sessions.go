package storetest

import (
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// testKeepSessions: a replica re-asserting its live streams heals a row that a
// delayed write of an older stream cleared or overwrote, and never takes a row
// from a stream opened later.
func testKeepSessions(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		mustDaemon(t, s, daemon(id, "t1"))
	}
	noErr(t, s.OpenSession(ctx, "n1", "s1", "r1", at(time.Second)))
	noErr(t, s.OpenSession(ctx, "n2", "s2", "r1", at(time.Second)))
	// n2: an older stream's late open overwrote the row, and its close cleared it.
	noErr(t, s.OpenSession(ctx, "n2", "old", "r0", t0))
	noErr(t, s.CloseSession(ctx, "n2", "old"))
	// n3: the row names an older stream on another replica.
	noErr(t, s.OpenSession(ctx, "n3", "old3", "r0", t0))
	// n4: a newer stream on another replica holds the row.
	noErr(t, s.OpenSession(ctx, "n4", "new4", "r2", at(time.Minute)))

	n, err := s.KeepSessions(ctx, "r1", []store.LiveSession{
		{NodeID: "n1", SessionID: "s1", Since: at(time.Second)},
		{NodeID: "n2", SessionID: "s2", Since: at(time.Second)},
		{NodeID: "n3", SessionID: "s3", Since: at(time.Second)},
		{NodeID: "n4", SessionID: "s4", Since: at(time.Second)},
		{NodeID: "gone", SessionID: "s5", Since: at(time.Second)},
	})
	noErr(t, err)
	equal(t, "rows changed", n, 2)
	for _, w := range []struct{ node, session, replica string }{
		{"n1", "s1", "r1"}, {"n2", "s2", "r1"}, {"n3", "s3", "r1"}, {"n4", "new4", "r2"},
	} {
		d := getDaemon(t, s, w.node)
		if d.SessionID != w.session || d.SessionReplica != w.replica {
			t.Errorf("%s session = (%q, %q), want (%q, %q)", w.node, d.SessionID, d.SessionReplica, w.session, w.replica)
		}
	}
	n, err = s.KeepSessions(ctx, "r1", nil)
	noErr(t, err)
	equal(t, "rows changed by an empty keep", n, 0)
}
