package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// rotationWrite is node nodeID's rotation number i away from oldKey.
func rotationWrite(nodeID string, oldKey []byte, i int) store.RotationWrite {
	rid := fmt.Sprintf("%s-rot-%d", nodeID, i)
	jti := fmt.Sprintf("%s-jti-%d", nodeID, i+1)
	return store.RotationWrite{
		NodeID:       nodeID,
		OldKey:       oldKey,
		NewKey:       pubkey(fmt.Sprintf("%s-new-%d", nodeID, i)),
		OverlapUntil: at(time.Minute),
		At:           at(time.Second),
		Blacklist:    store.BlacklistEntry{JTI: fmt.Sprintf("%s-jti-%d", nodeID, i), NodeID: nodeID, Reason: "rotated", ExpiresAt: at(time.Hour), AddedAt: at(time.Second)},
		Token:        store.NodeToken{JTI: jti, NodeID: nodeID, KeyFingerprint: "fp-new", IssuedAt: at(time.Second), ExpiresAt: at(time.Hour)},
		Rotation:     store.Rotation{RotationID: rid, NodeID: nodeID, OldFingerprint: "fp-old", NewFingerprint: "fp-new", NewTokenJTI: jti, NewToken: "token", At: at(time.Second)},
		Audit:        store.AuditEntry{At: at(time.Second), TenantID: "t1", Actor: "node:" + nodeID, Action: "rotate", NodeID: nodeID, Result: "ok", Details: map[string]string{"rotation_id": rid}},
	}
}

// wantRotationWritten checks every write of w is in the store, as the single methods
// would have made it.
func wantRotationWritten(t *testing.T, s store.Store, w store.RotationWrite) {
	t.Helper()
	ctx := t.Context()
	d := getDaemon(t, s, w.NodeID)
	equal(t, "public key", d.PublicKey, w.NewKey)
	equal(t, "previous key", d.PreviousPublicKey, w.OldKey)
	equal(t, "overlap until", d.OverlapUntil, w.OverlapUntil)
	equal(t, "key rotated at", d.KeyRotatedAt, w.At)
	owner, err := s.KeyOwner(ctx, w.NewKey)
	noErr(t, err)
	equal(t, "new key's owner", owner, w.NodeID)
	listed, err := s.IsBlacklisted(ctx, w.Blacklist.JTI)
	noErr(t, err)
	equal(t, "old token blacklisted", listed, true)
	tok, err := s.GetNodeToken(ctx, w.Token.JTI)
	noErr(t, err)
	equal(t, "new token", tok, w.Token)
	rot, err := s.GetRotation(ctx, w.Rotation.RotationID)
	noErr(t, err)
	equal(t, "rotation", rot, w.Rotation)
	list, err := s.ListNodeAudit(ctx, "t1", w.NodeID, 0, 0)
	noErr(t, err)
	found := false
	for _, e := range list {
		if e.Details["rotation_id"] == w.Rotation.RotationID {
			found = true
			equal(t, "audit entry", []any{e.At, e.Actor, e.Action, e.Result, e.Details}, []any{w.Audit.At, w.Audit.Actor, w.Audit.Action, w.Audit.Result, w.Audit.Details})
		}
	}
	if !found {
		t.Fatalf("no audit entry for rotation %s in %+v", w.Rotation.RotationID, list)
	}
}

// wantNothingWritten checks that none of the writes of w that could be told apart
// from what was there before is in the store.
func wantNothingWritten(t *testing.T, s store.Store, w store.RotationWrite, before store.Daemon, auditBefore int) {
	t.Helper()
	ctx := t.Context()
	equal(t, "daemon unchanged", getDaemon(t, s, w.NodeID), before)
	if tok, err := s.GetNodeToken(ctx, w.Token.JTI); err == nil && tok == w.Token {
		t.Fatalf("new token %s written by a rotation that did not apply", w.Token.JTI)
	}
	list, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	for _, e := range list[auditBefore:] {
		if e.Details["rotation_id"] == w.Rotation.RotationID && e.Action == "rotate" {
			t.Fatalf("audit entry %+v written by a rotation that did not apply", e)
		}
	}
}

func testApplyRotation(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	mustDaemon(t, s, d)
	noErr(t, s.ClaimPublicKey(ctx, d.PublicKey, "n1", t0))

	// Applied twice in a row: every write as its single method makes it.
	w0 := rotationWrite("n1", d.PublicKey, 0)
	applied, err := s.ApplyRotation(ctx, w0)
	noErr(t, err)
	equal(t, "applied", applied, true)
	wantRotationWritten(t, s, w0)
	w1 := rotationWrite("n1", w0.NewKey, 1)
	applied, err = s.ApplyRotation(ctx, w1)
	noErr(t, err)
	equal(t, "applied from the new key", applied, true)
	wantRotationWritten(t, s, w1)

	// Each way one write fails: nothing of the rotation is written.
	mustDaemon(t, s, daemon("n2", "t1"))
	noErr(t, s.ClaimPublicKey(ctx, pubkey("claimed"), "n2", t0))
	revoked := daemon("n3", "t1")
	mustDaemon(t, s, revoked)
	noErr(t, s.RevokeDaemon(ctx, "n3", t0))
	noErr(t, s.InsertNodeToken(ctx, store.NodeToken{JTI: "taken-jti", NodeID: "n1", IssuedAt: t0, ExpiresAt: at(time.Hour)}))
	cur := w1.NewKey
	failing := map[string]func(w *store.RotationWrite){
		"key claimed by another daemon": func(w *store.RotationWrite) { w.NewKey = pubkey("claimed") },
		"key already this daemon's":     func(w *store.RotationWrite) { w.NewKey = d.PublicKey },
		"swap from a stale key":         func(w *store.RotationWrite) { w.OldKey = w0.NewKey },
		"rotation id already recorded":  func(w *store.RotationWrite) { w.Rotation.RotationID = w0.Rotation.RotationID },
		"token id already recorded":     func(w *store.RotationWrite) { w.Token.JTI = "taken-jti" },
		"revoked daemon": func(w *store.RotationWrite) {
			*w = rotationWrite("n3", revoked.PublicKey, 7)
		},
		"unknown daemon": func(w *store.RotationWrite) {
			*w = rotationWrite("n9", pubkey("n9"), 7)
		},
	}
	i := 10
	for name, mutate := range failing {
		i++
		w := rotationWrite("n1", cur, i)
		mutate(&w)
		var before store.Daemon
		if w.NodeID != "n9" {
			before = getDaemon(t, s, w.NodeID)
		}
		all, err := s.ListAudit(ctx, "", 0, 0)
		noErr(t, err)
		applied, err := s.ApplyRotation(ctx, w)
		noErr(t, err)
		if applied {
			t.Fatalf("%s: applied", name)
		}
		if w.NodeID != "n9" {
			wantNothingWritten(t, s, w, before, len(all))
		}
		if w.Rotation.RotationID != w0.Rotation.RotationID {
			_, err := s.GetRotation(ctx, w.Rotation.RotationID)
			wantErr(t, err, store.ErrNotFound)
		}
		if string(w.NewKey) != string(pubkey("claimed")) && string(w.NewKey) != string(d.PublicKey) {
			_, err := s.KeyOwner(ctx, w.NewKey)
			wantErr(t, err, store.ErrNotFound)
		}
	}
}

// Concurrent rotations of one daemon from one key: one applies, the others write
// nothing, whatever order they reach the database in.
func testConcurrentApplyRotation(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	mustDaemon(t, s, d)
	applied := make([]bool, racers)
	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			applied[i], errs[i] = s.ApplyRotation(ctx, rotationWrite("n1", d.PublicKey, i))
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i := range racers {
		noErr(t, errs[i])
		if applied[i] {
			if winner >= 0 {
				t.Fatalf("racers %d and %d both applied", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("no racer applied")
	}
	wantRotationWritten(t, s, rotationWrite("n1", d.PublicKey, winner))
	list, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	equal(t, "audit entries", len(list), 1)
	for i := range racers {
		if i == winner {
			continue
		}
		w := rotationWrite("n1", d.PublicKey, i)
		_, err := s.GetRotation(ctx, w.Rotation.RotationID)
		wantErr(t, err, store.ErrNotFound)
		_, err = s.KeyOwner(ctx, w.NewKey)
		wantErr(t, err, store.ErrNotFound)
		_, err = s.GetNodeToken(ctx, w.Token.JTI)
		wantErr(t, err, store.ErrNotFound)
	}
}
