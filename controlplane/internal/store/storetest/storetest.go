// Package storetest owns the conformance suite every store.Store implementation must
// pass. The suite is the executable half of the contract in package store: where the
// interface comments are terse, what these tests check is what callers may rely on.
//
// Conventions the suite pins down beyond the interface comments:
//   - times come back in UTC, truncated to the microsecond; zero times stay zero;
//   - Tags and audit Details are never nil on read (empty instead);
//   - a method that loses a compare-and-swap or hits a duplicate inside InTx leaves the
//     transaction usable, so a caller can record the failure and still commit;
//   - a row that refers to an unknown tenant is rejected with store.ErrNotFound.
package storetest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Run runs the whole suite. open must return a fresh, empty, migrated store for each
// call and arrange for it to be closed when t ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Tenants", testTenants},
		{"APITokens", testAPITokens},
		{"SigningKeys", testSigningKeys},
		{"EnrollmentTokens", testEnrollmentTokens},
		{"ConsumeEnrollmentToken", testConsumeEnrollmentToken},
		{"ClaimPublicKey", testClaimPublicKey},
		{"DaemonRoundTrip", testDaemonRoundTrip},
		{"InsertDaemonErrors", testInsertDaemonErrors},
		{"ListDaemons", testListDaemons},
		{"SwapDaemonKey", testSwapDaemonKey},
		{"RevokeDaemon", testRevokeDaemon},
		{"DeleteDaemon", testDeleteDaemon},
		{"DaemonTagsAndSecurityContext", testDaemonTags},
		{"Sessions", testSessions},
		{"TouchLastSeen", testTouchLastSeen},
		{"NodeTokens", testNodeTokens},
		{"Blacklist", testBlacklist},
		{"Nonces", testNonces},
		{"Rotations", testRotations},
		{"Audit", testAudit},
		{"AuditChain", testAuditChain},
		{"ConcurrentAuditChain", testConcurrentAuditChain},
		{"InTxCommit", testInTxCommit},
		{"InTxRollback", testInTxRollback},
		{"InTxPanic", testInTxPanic},
		{"InTxUsableAfterSentinel", testInTxUsableAfterSentinel},
		{"ConcurrentSwapDaemonKey", testConcurrentSwap},
		{"ConcurrentConsumeEnrollmentToken", testConcurrentConsume},
		{"ConcurrentIndependentRotations", testConcurrentIndependentRotations},
		{"NodeRotations", testNodeRotations},
		{"ApplyRotation", testApplyRotation},
		{"ConcurrentApplyRotation", testConcurrentApplyRotation},
		{"FleetRunRoundTrip", testFleetRunRoundTrip},
		{"FleetRunHosts", testFleetRunHosts},
		{"FleetRunFinishAndCancel", testFleetRunFinishAndCancel},
		{"FleetRunLease", testFleetRunLease},
		{"FleetRunEvents", testFleetRunEvents},
		{"FleetRunStartInOneTx", testFleetRunStartInOneTx},
		{"ConcurrentFleetRunEvents", testConcurrentFleetRunEvents},
		{"ConcurrentFleetFinishers", testConcurrentFleetFinishers},
		{"RotationPolicies", testRotationPolicies},
		{"LocalMaxKeyAge", testLocalMaxKeyAge},
		{"Ping", testPing},
		{"Uniqueness", testUniqueness},
		{"KeepSessions", testKeepSessions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// t0 has a non-zero microsecond part so that a store dropping sub-second precision
// fails the round-trip tests.
var t0 = time.Date(2031, 3, 4, 5, 6, 7, 890123000, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// pubkey makes a distinct 32-byte key per seed.
func pubkey(seed string) []byte {
	h := sha256.Sum256([]byte("pubkey:" + seed))
	return h[:]
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}

func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

func sortedBy[T any](xs []T, key func(T) string) []T {
	out := slices.Clone(xs)
	slices.SortFunc(out, func(a, b T) int { return strings.Compare(key(a), key(b)) })
	return out
}

func mustTenant(t *testing.T, s store.Tx, id string) {
	t.Helper()
	noErr(t, s.CreateTenant(t.Context(), store.Tenant{ID: id, Name: "tenant " + id, Kind: store.TenantTeam, CreatedAt: t0}))
}

// daemon returns a fully populated active daemon, so round-trips exercise every column.
func daemon(nodeID, tenantID string) store.Daemon {
	return store.Daemon{
		NodeID:          nodeID,
		TenantID:        tenantID,
		DisplayName:     "host " + nodeID,
		Tags:            []string{"prod", "web"},
		OS:              "linux",
		Hostname:        nodeID + ".example.internal",
		PublicKey:       pubkey(nodeID),
		Status:          store.DaemonActive,
		SecurityContext: "default",
		EnrolledAt:      t0,
	}
}

func mustDaemon(t *testing.T, s store.Tx, d store.Daemon) {
	t.Helper()
	noErr(t, s.InsertDaemon(t.Context(), d))
}

func getDaemon(t *testing.T, s store.Tx, nodeID string) store.Daemon {
	t.Helper()
	d, err := s.GetDaemon(t.Context(), nodeID)
	noErr(t, err)
	return d
}

func testTenants(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := store.Tenant{ID: "acme", Name: "Acme", Kind: store.TenantTeam, CreatedAt: t0}
	b := store.Tenant{ID: "alice", Name: "Alice", Kind: store.TenantPersonal, CreatedAt: at(time.Second)}
	noErr(t, s.CreateTenant(ctx, a))
	noErr(t, s.CreateTenant(ctx, b))

	got, err := s.GetTenant(ctx, "acme")
	noErr(t, err)
	equal(t, "GetTenant", got, a)

	wantErr(t, s.CreateTenant(ctx, store.Tenant{ID: "acme", Name: "Other", Kind: store.TenantTeam}), store.ErrConflict)
	got, err = s.GetTenant(ctx, "acme")
	noErr(t, err)
	equal(t, "tenant after duplicate create", got, a)

	_, err = s.GetTenant(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)

	list, err := s.ListTenants(ctx)
	noErr(t, err)
	equal(t, "ListTenants", sortedBy(list, func(x store.Tenant) string { return x.ID }), []store.Tenant{a, b})

	zero := store.Tenant{ID: "zero", Name: "No time", Kind: store.TenantPersonal}
	noErr(t, s.CreateTenant(ctx, zero))
	got, err = s.GetTenant(ctx, "zero")
	noErr(t, err)
	equal(t, "tenant with zero CreatedAt", got, zero)
}

func testAPITokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	mustTenant(t, s, "t2")
	a := store.APIToken{ID: "a", TenantID: "t1", Role: store.RoleAdmin, Name: "bootstrap", SecretHash: pubkey("secret-a"), CreatedAt: t0}
	b := store.APIToken{ID: "b", TenantID: "t1", Role: store.RoleViewer, Name: "dashboards", SecretHash: pubkey("secret-b"), CreatedAt: at(time.Minute)}
	c := store.APIToken{ID: "c", TenantID: "t2", Role: store.RoleOperator, Name: "ci", SecretHash: pubkey("secret-c"), CreatedAt: at(2 * time.Minute)}
	for _, tok := range []store.APIToken{a, b, c} {
		noErr(t, s.CreateAPIToken(ctx, tok))
	}

	got, err := s.GetAPIToken(ctx, "a")
	noErr(t, err)
	equal(t, "GetAPIToken", got, a)
	_, err = s.GetAPIToken(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)

	wantErr(t, s.CreateAPIToken(ctx, store.APIToken{ID: "a", TenantID: "t2", Role: store.RoleViewer, SecretHash: pubkey("x")}), store.ErrConflict)
	wantErr(t, s.CreateAPIToken(ctx, store.APIToken{ID: "d", TenantID: "ghost", Role: store.RoleViewer, SecretHash: pubkey("d")}), store.ErrNotFound)

	byID := func(x store.APIToken) string { return x.ID }
	list, err := s.ListAPITokens(ctx, "t1")
	noErr(t, err)
	equal(t, "ListAPITokens(t1)", sortedBy(list, byID), []store.APIToken{a, b})
	list, err = s.ListAPITokens(ctx, "")
	noErr(t, err)
	equal(t, "ListAPITokens(all)", sortedBy(list, byID), []store.APIToken{a, b, c})
	list, err = s.ListAPITokens(ctx, "t3")
	noErr(t, err)
	equal(t, "ListAPITokens(unknown tenant) length", len(list), 0)

	noErr(t, s.RevokeAPIToken(ctx, "a", at(time.Hour)))
	// A second revocation must not rewrite when the token stopped working.
	noErr(t, s.RevokeAPIToken(ctx, "a", at(2*time.Hour)))
	got, err = s.GetAPIToken(ctx, "a")
	noErr(t, err)
	a.RevokedAt = at(time.Hour)
	equal(t, "revoked token", got, a)
	got, err = s.GetAPIToken(ctx, "b")
	noErr(t, err)
	equal(t, "other token after revoke", got, b)
	wantErr(t, s.RevokeAPIToken(ctx, "nope", t0), store.ErrNotFound)
}

func testSigningKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := func(kid string, created time.Time) store.SigningKey {
		return store.SigningKey{KID: kid, PrivateKey: append(pubkey(kid+"-priv"), pubkey(kid)...), PublicKey: pubkey(kid), CreatedAt: created}
	}
	k1, k2, k3 := k("k1", t0), k("k2", at(time.Hour)), k("k3", at(2*time.Hour))
	// Inserted out of order so that insertion order cannot pass for "newest first".
	for _, key := range []store.SigningKey{k2, k3, k1} {
		noErr(t, s.InsertSigningKey(ctx, key))
	}
	list, err := s.ListSigningKeys(ctx)
	noErr(t, err)
	equal(t, "ListSigningKeys", list, []store.SigningKey{k3, k2, k1})

	wantErr(t, s.InsertSigningKey(ctx, k("k1", at(3*time.Hour))), store.ErrConflict)

	noErr(t, s.RetireSigningKey(ctx, "k1", at(90*time.Minute)))
	list, err = s.ListSigningKeys(ctx)
	noErr(t, err)
	k1.RetiredAt = at(90 * time.Minute)
	equal(t, "ListSigningKeys after retire", list, []store.SigningKey{k3, k2, k1})
	wantErr(t, s.RetireSigningKey(ctx, "nope", t0), store.ErrNotFound)

	// Retired at 90m: kept at a cutoff of exactly 90m, deleted after it. The never
	// retired keys survive any cutoff.
	noErr(t, s.RetireSigningKey(ctx, "k2", at(3*time.Hour)))
	kids, err := s.DeleteSigningKeysRetiredBefore(ctx, at(90*time.Minute))
	noErr(t, err)
	equal(t, "deleted at the retirement instant", kids, []string{})
	kids, err = s.DeleteSigningKeysRetiredBefore(ctx, at(100*time.Hour))
	noErr(t, err)
	slices.Sort(kids)
	equal(t, "deleted after both retirements", kids, []string{"k1", "k2"})
	list, err = s.ListSigningKeys(ctx)
	noErr(t, err)
	equal(t, "ListSigningKeys after delete", list, []store.SigningKey{k3})
}

func enrollmentToken(id, tenantID string, created time.Time) store.EnrollmentToken {
	return store.EnrollmentToken{
		ID:         id,
		TenantID:   tenantID,
		Name:       "token " + id,
		SecretHash: pubkey("enroll-" + id),
		Tags:       []string{"edge", "eu-west"},
		CreatedBy:  "op-1",
		CreatedAt:  created,
		ExpiresAt:  created.Add(15 * time.Minute),
	}
}

func testEnrollmentTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	mustTenant(t, s, "t2")
	a := enrollmentToken("a", "t1", t0)
	b := enrollmentToken("b", "t1", at(time.Minute))
	c := enrollmentToken("c", "t2", at(2*time.Minute))
	untagged := enrollmentToken("d", "t1", at(3*time.Minute))
	untagged.Tags = nil
	for _, tok := range []store.EnrollmentToken{b, a, c, untagged} {
		noErr(t, s.CreateEnrollmentToken(ctx, tok))
	}

	got, err := s.GetEnrollmentToken(ctx, "a")
	noErr(t, err)
	equal(t, "GetEnrollmentToken", got, a)
	got, err = s.GetEnrollmentToken(ctx, "d")
	noErr(t, err)
	if got.Tags == nil || len(got.Tags) != 0 {
		t.Fatalf("nil tags read back as %#v, want []string{}", got.Tags)
	}
	untagged.Tags = []string{}
	_, err = s.GetEnrollmentToken(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)

	wantErr(t, s.CreateEnrollmentToken(ctx, enrollmentToken("a", "t2", t0)), store.ErrConflict)
	wantErr(t, s.CreateEnrollmentToken(ctx, enrollmentToken("e", "ghost", t0)), store.ErrNotFound)

	list, err := s.ListEnrollmentTokens(ctx, "t1")
	noErr(t, err)
	equal(t, "ListEnrollmentTokens(t1), newest first", list, []store.EnrollmentToken{untagged, b, a})
	list, err = s.ListEnrollmentTokens(ctx, "")
	noErr(t, err)
	equal(t, "ListEnrollmentTokens(all), newest first", list, []store.EnrollmentToken{untagged, c, b, a})

	// Another tenant's token is invisible: same error as a missing one, nothing changes.
	wantErr(t, s.RevokeEnrollmentToken(ctx, "t2", "a", at(time.Hour)), store.ErrNotFound)
	got, err = s.GetEnrollmentToken(ctx, "a")
	noErr(t, err)
	equal(t, "token after wrong-tenant revoke", got, a)

	noErr(t, s.RevokeEnrollmentToken(ctx, "t1", "a", at(time.Hour)))
	noErr(t, s.RevokeEnrollmentToken(ctx, "t1", "a", at(2*time.Hour)))
	a.RevokedAt = at(time.Hour)
	got, err = s.GetEnrollmentToken(ctx, "a")
	noErr(t, err)
	equal(t, "revoked token keeps first revocation time", got, a)

	noErr(t, s.RevokeEnrollmentToken(ctx, "", "c", at(time.Hour)))
	got, err = s.GetEnrollmentToken(ctx, "c")
	noErr(t, err)
	equal(t, "token revoked with any-tenant", got.RevokedAt, at(time.Hour))

	wantErr(t, s.RevokeEnrollmentToken(ctx, "", "nope", t0), store.ErrNotFound)
	wantErr(t, s.RevokeEnrollmentToken(ctx, "t1", "nope", t0), store.ErrNotFound)
}

func testConsumeEnrollmentToken(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	good := enrollmentToken("good", "t1", t0)
	expired := enrollmentToken("expired", "t1", t0)
	revoked := enrollmentToken("revoked", "t1", t0)
	edge := enrollmentToken("edge", "t1", t0)
	for _, tok := range []store.EnrollmentToken{good, expired, revoked, edge} {
		noErr(t, s.CreateEnrollmentToken(ctx, tok))
	}

	noErr(t, s.ConsumeEnrollmentToken(ctx, "good", "node-1", at(time.Minute)))
	got, err := s.GetEnrollmentToken(ctx, "good")
	noErr(t, err)
	good.UsedAt, good.UsedBy = at(time.Minute), "node-1"
	equal(t, "consumed token", got, good)

	wantErr(t, s.ConsumeEnrollmentToken(ctx, "good", "node-2", at(2*time.Minute)), store.ErrTokenUsed)
	got, err = s.GetEnrollmentToken(ctx, "good")
	noErr(t, err)
	equal(t, "token after second consume", got, good)

	// expires_at is the first instant the token is no longer valid.
	wantErr(t, s.ConsumeEnrollmentToken(ctx, "expired", "node-3", expired.ExpiresAt), store.ErrTokenExpired)
	wantErr(t, s.ConsumeEnrollmentToken(ctx, "expired", "node-3", expired.ExpiresAt.Add(time.Hour)), store.ErrTokenExpired)
	got, err = s.GetEnrollmentToken(ctx, "expired")
	noErr(t, err)
	equal(t, "expired token unchanged", got, expired)

	noErr(t, s.ConsumeEnrollmentToken(ctx, "edge", "node-4", edge.ExpiresAt.Add(-time.Microsecond)))

	noErr(t, s.RevokeEnrollmentToken(ctx, "t1", "revoked", at(time.Second)))
	wantErr(t, s.ConsumeEnrollmentToken(ctx, "revoked", "node-5", at(time.Minute)), store.ErrTokenRevoked)
	got, err = s.GetEnrollmentToken(ctx, "revoked")
	noErr(t, err)
	if !got.UsedAt.IsZero() || got.UsedBy != "" {
		t.Fatalf("revoked token was marked used: %+v", got)
	}

	wantErr(t, s.ConsumeEnrollmentToken(ctx, "nope", "node-6", t0), store.ErrNotFound)
}

func testClaimPublicKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	k1, k2 := pubkey("k1"), pubkey("k2")
	noErr(t, s.ClaimPublicKey(ctx, k1, "n1", t0))
	wantErr(t, s.ClaimPublicKey(ctx, k1, "n1", at(time.Second)), store.ErrKeyInUse)
	wantErr(t, s.ClaimPublicKey(ctx, k1, "n2", at(time.Second)), store.ErrKeyInUse)
	noErr(t, s.ClaimPublicKey(ctx, k2, "n1", t0))
	owner, err := s.KeyOwner(ctx, k1)
	noErr(t, err)
	equal(t, "owner of k1", owner, "n1")
	_, err = s.KeyOwner(ctx, pubkey("never claimed"))
	wantErr(t, err, store.ErrNotFound)

	// A claim outlives the daemon: a deleted host's key can never come back.
	mustTenant(t, s, "t1")
	d := daemon("n3", "t1")
	noErr(t, s.ClaimPublicKey(ctx, d.PublicKey, d.NodeID, t0))
	mustDaemon(t, s, d)
	noErr(t, s.DeleteDaemon(ctx, d.NodeID))
	wantErr(t, s.ClaimPublicKey(ctx, d.PublicKey, "n4", at(time.Hour)), store.ErrKeyInUse)
	wantErr(t, s.ClaimPublicKey(ctx, d.PublicKey, d.NodeID, at(time.Hour)), store.ErrKeyInUse)
	owner, err = s.KeyOwner(ctx, d.PublicKey)
	noErr(t, err)
	equal(t, "owner of a deleted daemon's key", owner, "n3")
	// Inside a transaction the owner is visible to the claim's own transaction.
	k3 := pubkey("k3")
	noErr(t, s.InTx(ctx, func(tx store.Tx) error {
		noErr(t, tx.ClaimPublicKey(ctx, k3, "n5", t0))
		owner, err := tx.KeyOwner(ctx, k3)
		noErr(t, err)
		equal(t, "owner inside the claiming transaction", owner, "n5")
		return nil
	}))
}

func testDaemonRoundTrip(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	full := store.Daemon{
		NodeID:            "full",
		TenantID:          "t1",
		DisplayName:       "Full House",
		Tags:              []string{"a", "b", "c"},
		OS:                "linux",
		Hostname:          "full.example.internal",
		PublicKey:         pubkey("full-new"),
		PreviousPublicKey: pubkey("full-old"),
		OverlapUntil:      at(time.Minute),
		Status:            store.DaemonRevoked,
		SecurityContext:   "restricted",
		EnrolledAt:        at(-time.Hour),
		KeyRotatedAt:      t0,
		LastSeenAt:        at(30 * time.Second),
		RevokedAt:         at(45 * time.Second),
		SessionID:         "sess-1",
		SessionReplica:    "replica-a",
		SessionSince:      at(10 * time.Second),
	}
	mustDaemon(t, s, full)
	equal(t, "GetDaemon(full)", getDaemon(t, s, "full"), full)

	minimal := store.Daemon{NodeID: "min", TenantID: "t1", PublicKey: pubkey("min"), Status: store.DaemonActive}
	mustDaemon(t, s, minimal)
	got := getDaemon(t, s, "min")
	if got.Tags == nil || len(got.Tags) != 0 {
		t.Fatalf("nil tags read back as %#v, want []string{}", got.Tags)
	}
	if len(got.PreviousPublicKey) != 0 {
		t.Fatalf("nil PreviousPublicKey read back as %x", got.PreviousPublicKey)
	}
	got.Tags, got.PreviousPublicKey = nil, nil
	equal(t, "GetDaemon(minimal)", got, minimal)

	// An empty status means a new, active daemon.
	blank := store.Daemon{NodeID: "blank", TenantID: "t1", PublicKey: pubkey("blank")}
	mustDaemon(t, s, blank)
	equal(t, "status of daemon inserted without one", getDaemon(t, s, "blank").Status, store.DaemonActive)

	_, err := s.GetDaemon(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)
}

func testInsertDaemonErrors(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	mustDaemon(t, s, d)

	dup := daemon("n1", "t1")
	dup.PublicKey = pubkey("other")
	wantErr(t, s.InsertDaemon(ctx, dup), store.ErrConflict)
	equal(t, "daemon after duplicate insert", getDaemon(t, s, "n1"), d)

	// Two daemons can never hold one key, whatever daemon_keys says.
	sameKey := daemon("n2", "t1")
	sameKey.PublicKey = d.PublicKey
	wantErr(t, s.InsertDaemon(ctx, sameKey), store.ErrKeyInUse)
	_, err := s.GetDaemon(ctx, "n2")
	wantErr(t, err, store.ErrNotFound)

	wantErr(t, s.InsertDaemon(ctx, daemon("n3", "ghost")), store.ErrNotFound)
}

func testListDaemons(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	mustTenant(t, s, "t2")
	n1, n2, n3 := daemon("n1", "t1"), daemon("n2", "t1"), daemon("n3", "t2")
	n2.EnrolledAt = at(-time.Hour)
	for _, d := range []store.Daemon{n3, n2, n1} {
		mustDaemon(t, s, d)
	}
	byNode := func(d store.Daemon) string { return d.NodeID }

	list, err := s.ListDaemons(ctx, store.DaemonFilter{TenantID: "t1"})
	noErr(t, err)
	equal(t, "ListDaemons(t1)", sortedBy(list, byNode), []store.Daemon{n1, n2})
	list, err = s.ListDaemons(ctx, store.DaemonFilter{})
	noErr(t, err)
	equal(t, "ListDaemons(all)", sortedBy(list, byNode), []store.Daemon{n1, n2, n3})
	list, err = s.ListDaemons(ctx, store.DaemonFilter{TenantID: "t3"})
	noErr(t, err)
	equal(t, "ListDaemons(unknown tenant) length", len(list), 0)
}

func testSwapDaemonKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	other := daemon("n2", "t1")
	mustDaemon(t, s, d)
	mustDaemon(t, s, other)
	keyA, keyB, keyC := d.PublicKey, pubkey("B"), pubkey("C")

	noErr(t, s.SwapDaemonKey(ctx, "n1", keyA, keyB, at(time.Minute), t0))
	want := d
	want.PublicKey, want.PreviousPublicKey = keyB, keyA
	want.OverlapUntil, want.KeyRotatedAt = at(time.Minute), t0
	equal(t, "daemon after swap", getDaemon(t, s, "n1"), want)

	// The old key is no longer current: the CAS must lose and change nothing.
	wantErr(t, s.SwapDaemonKey(ctx, "n1", keyA, keyC, at(2*time.Minute), at(time.Second)), store.ErrConflict)
	equal(t, "daemon after stale swap", getDaemon(t, s, "n1"), want)

	wantErr(t, s.SwapDaemonKey(ctx, "n1", keyB, other.PublicKey, at(2*time.Minute), at(time.Second)), store.ErrKeyInUse)
	equal(t, "daemon after swap to another daemon's key", getDaemon(t, s, "n1"), want)

	noErr(t, s.SwapDaemonKey(ctx, "n1", keyB, keyC, at(3*time.Minute), at(2*time.Minute)))
	want.PublicKey, want.PreviousPublicKey = keyC, keyB
	want.OverlapUntil, want.KeyRotatedAt = at(3*time.Minute), at(2*time.Minute)
	equal(t, "daemon after second swap", getDaemon(t, s, "n1"), want)

	noErr(t, s.RevokeDaemon(ctx, "n1", at(time.Hour)))
	wantErr(t, s.SwapDaemonKey(ctx, "n1", keyC, pubkey("D"), at(2*time.Hour), at(time.Hour)), store.ErrConflict)
	if got := getDaemon(t, s, "n1"); !reflect.DeepEqual(got.PublicKey, keyC) {
		t.Fatalf("revoked daemon's key changed to %x", got.PublicKey)
	}

	wantErr(t, s.SwapDaemonKey(ctx, "nope", keyA, pubkey("E"), at(time.Minute), t0), store.ErrNotFound)
	equal(t, "bystander daemon", getDaemon(t, s, "n2"), other)
}

func testRevokeDaemon(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	mustDaemon(t, s, d)
	mustDaemon(t, s, daemon("n2", "t1"))

	noErr(t, s.RevokeDaemon(ctx, "n1", at(time.Hour)))
	noErr(t, s.RevokeDaemon(ctx, "n1", at(2*time.Hour)))
	d.Status, d.RevokedAt = store.DaemonRevoked, at(time.Hour)
	equal(t, "revoked daemon", getDaemon(t, s, "n1"), d)
	equal(t, "bystander status", getDaemon(t, s, "n2").Status, store.DaemonActive)

	wantErr(t, s.RevokeDaemon(ctx, "nope", t0), store.ErrNotFound)
}

func testDeleteDaemon(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	mustDaemon(t, s, daemon("n1", "t1"))
	keep := daemon("n2", "t1")
	mustDaemon(t, s, keep)

	noErr(t, s.DeleteDaemon(ctx, "n1"))
	_, err := s.GetDaemon(ctx, "n1")
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.DeleteDaemon(ctx, "n1"), store.ErrNotFound)

	list, err := s.ListDaemons(ctx, store.DaemonFilter{})
	noErr(t, err)
	equal(t, "daemons after delete", list, []store.Daemon{keep})
}

func testDaemonTags(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	mustDaemon(t, s, d)

	noErr(t, s.UpdateDaemonTags(ctx, "n1", []string{"db", "eu"}))
	d.Tags = []string{"db", "eu"}
	equal(t, "daemon after tag update", getDaemon(t, s, "n1"), d)

	noErr(t, s.UpdateDaemonTags(ctx, "n1", nil))
	if got := getDaemon(t, s, "n1").Tags; got == nil || len(got) != 0 {
		t.Fatalf("tags after clearing = %#v, want []string{}", got)
	}
	wantErr(t, s.UpdateDaemonTags(ctx, "nope", []string{"x"}), store.ErrNotFound)

	before := getDaemon(t, s, "n1").SecurityContextVersion
	noErr(t, s.SetDaemonSecurityContext(ctx, "n1", "locked-down"))
	equal(t, "security context", getDaemon(t, s, "n1").SecurityContext, "locked-down")
	equal(t, "security context version", getDaemon(t, s, "n1").SecurityContextVersion, before+1)
	// Every assignment is a new version, so a token can tell it missed one.
	noErr(t, s.SetDaemonSecurityContext(ctx, "n1", "locked-down"))
	equal(t, "security context version after the same name", getDaemon(t, s, "n1").SecurityContextVersion, before+2)
	wantErr(t, s.SetDaemonSecurityContext(ctx, "nope", "x"), store.ErrNotFound)
}

func testSessions(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	for _, id := range []string{"n1", "n2", "n3"} {
		mustDaemon(t, s, daemon(id, "t1"))
	}
	session := func(nodeID string) (string, string, time.Time) {
		t.Helper()
		d := getDaemon(t, s, nodeID)
		return d.SessionID, d.SessionReplica, d.SessionSince
	}
	wantSession := func(nodeID, id, replica string, since time.Time) {
		t.Helper()
		gotID, gotReplica, gotSince := session(nodeID)
		if gotID != id || gotReplica != replica || !gotSince.Equal(since) {
			t.Fatalf("%s session = (%q, %q, %v), want (%q, %q, %v)", nodeID, gotID, gotReplica, gotSince, id, replica, since)
		}
	}

	noErr(t, s.OpenSession(ctx, "n1", "s1", "r1", t0))
	wantSession("n1", "s1", "r1", t0)
	noErr(t, s.OpenSession(ctx, "n1", "s2", "r2", at(time.Second)))
	wantSession("n1", "s2", "r2", at(time.Second))

	// A late close of the replaced stream must not clear the new one.
	noErr(t, s.CloseSession(ctx, "n1", "s1"))
	wantSession("n1", "s2", "r2", at(time.Second))
	noErr(t, s.CloseSession(ctx, "n1", "s2"))
	wantSession("n1", "", "", time.Time{})

	noErr(t, s.OpenSession(ctx, "n1", "s3", "r1", t0))
	noErr(t, s.OpenSession(ctx, "n2", "s4", "r1", t0))
	noErr(t, s.OpenSession(ctx, "n3", "s5", "r2", t0))
	noErr(t, s.CloseReplicaSessions(ctx, "r1"))
	wantSession("n1", "", "", time.Time{})
	wantSession("n2", "", "", time.Time{})
	wantSession("n3", "s5", "r2", t0)

	wantErr(t, s.OpenSession(ctx, "nope", "s6", "r1", t0), store.ErrNotFound)
}

func testTouchLastSeen(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	mustDaemon(t, s, daemon("n1", "t1"))
	mustDaemon(t, s, daemon("n2", "t1"))
	mustDaemon(t, s, daemon("n3", "t1"))
	lastSeen := func(nodeID string) time.Time { t.Helper(); return getDaemon(t, s, nodeID).LastSeenAt }

	// Unknown nodes (deleted since the heartbeat) are ignored, not an error.
	noErr(t, s.TouchLastSeen(ctx, map[string]time.Time{"n1": at(10 * time.Second), "n2": at(5 * time.Second), "ghost": t0}))
	equal(t, "n1 last seen", lastSeen("n1"), at(10*time.Second))
	equal(t, "n2 last seen", lastSeen("n2"), at(5*time.Second))
	if !lastSeen("n3").IsZero() {
		t.Fatalf("untouched n3 has last seen %v", lastSeen("n3"))
	}

	noErr(t, s.TouchLastSeen(ctx, map[string]time.Time{"n1": at(time.Second), "n2": at(20 * time.Second)}))
	equal(t, "n1 last seen never goes backwards", lastSeen("n1"), at(10*time.Second))
	equal(t, "n2 last seen moves forwards", lastSeen("n2"), at(20*time.Second))

	noErr(t, s.TouchLastSeen(ctx, nil))
	noErr(t, s.TouchLastSeen(ctx, map[string]time.Time{}))
}

func testNodeTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	tok := func(jti, nodeID string, expires time.Time) store.NodeToken {
		return store.NodeToken{JTI: jti, NodeID: nodeID, KeyFingerprint: "SHA256:" + jti, IssuedAt: expires.Add(-time.Hour), ExpiresAt: expires}
	}
	now := t0
	live1 := tok("live1", "n1", at(time.Hour))
	live2 := tok("live2", "n1", at(2*time.Hour))
	expired := tok("expired", "n1", at(-time.Second))
	boundary := tok("boundary", "n1", now)
	banned := tok("banned", "n1", at(time.Hour))
	elsewhere := tok("elsewhere", "n2", at(time.Hour))
	for _, x := range []store.NodeToken{live1, live2, expired, boundary, banned, elsewhere} {
		noErr(t, s.InsertNodeToken(ctx, x))
	}
	noErr(t, s.BlacklistToken(ctx, store.BlacklistEntry{JTI: "banned", NodeID: "n1", Reason: "revoked", ExpiresAt: banned.ExpiresAt, AddedAt: now}))

	got, err := s.GetNodeToken(ctx, "live1")
	noErr(t, err)
	equal(t, "GetNodeToken", got, live1)
	_, err = s.GetNodeToken(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.InsertNodeToken(ctx, tok("live1", "n2", at(time.Hour))), store.ErrConflict)

	active, err := s.ActiveNodeTokens(ctx, "n1", now)
	noErr(t, err)
	equal(t, "ActiveNodeTokens(n1)", sortedBy(active, func(x store.NodeToken) string { return x.JTI }), []store.NodeToken{live1, live2})
	active, err = s.ActiveNodeTokens(ctx, "n3", now)
	noErr(t, err)
	equal(t, "ActiveNodeTokens(unknown node) length", len(active), 0)
}

func testBlacklist(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := t0
	live := store.BlacklistEntry{JTI: "live", NodeID: "n1", Reason: "rotated", ExpiresAt: at(time.Hour), AddedAt: at(-time.Minute)}
	gone := store.BlacklistEntry{JTI: "gone", NodeID: "n1", Reason: "refreshed", ExpiresAt: at(-time.Second), AddedAt: at(-time.Hour)}
	boundary := store.BlacklistEntry{JTI: "boundary", NodeID: "n2", Reason: "logout", ExpiresAt: now, AddedAt: at(-time.Hour)}
	for _, e := range []store.BlacklistEntry{live, gone, boundary} {
		noErr(t, s.BlacklistToken(ctx, e))
	}
	again := live
	again.Reason, again.AddedAt = "revoked", now
	noErr(t, s.BlacklistToken(ctx, again))

	n, err := s.CountBlacklist(ctx)
	noErr(t, err)
	equal(t, "CountBlacklist", n, 3)

	for jti, want := range map[string]bool{"live": true, "gone": true, "nope": false} {
		got, err := s.IsBlacklisted(ctx, jti)
		noErr(t, err)
		equal(t, "IsBlacklisted("+jti+")", got, want)
	}

	list, err := s.ListBlacklist(ctx, now)
	noErr(t, err)
	equal(t, "ListBlacklist (first insert wins)", list, []store.BlacklistEntry{live})

	purged, err := s.PurgeBlacklist(ctx, now)
	noErr(t, err)
	equal(t, "PurgeBlacklist", purged, 2)
	purged, err = s.PurgeBlacklist(ctx, now)
	noErr(t, err)
	equal(t, "second PurgeBlacklist", purged, 0)
	n, err = s.CountBlacklist(ctx)
	noErr(t, err)
	equal(t, "CountBlacklist after purge", n, 1)
	listed, err := s.IsBlacklisted(ctx, "gone")
	noErr(t, err)
	equal(t, "IsBlacklisted(gone) after purge", listed, false)
	listed, err = s.IsBlacklisted(ctx, "live")
	noErr(t, err)
	equal(t, "IsBlacklisted(live) after purge", listed, true)
}

func testNonces(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := t0
	attest := store.Nonce{Value: "n-attest", NodeID: "n1", Purpose: "attest", ExpiresAt: at(time.Minute)}
	enroll := store.Nonce{Value: "n-enroll", Purpose: "enroll", ExpiresAt: at(time.Minute)}
	stale := store.Nonce{Value: "n-stale", NodeID: "n1", Purpose: "attest", ExpiresAt: now}
	for _, n := range []store.Nonce{attest, enroll, stale} {
		noErr(t, s.InsertNonce(ctx, n))
	}
	wantErr(t, s.InsertNonce(ctx, store.Nonce{Value: "n-attest", Purpose: "enroll", ExpiresAt: at(time.Hour)}), store.ErrConflict)

	got, err := s.ConsumeNonce(ctx, "n-attest", now)
	noErr(t, err)
	equal(t, "ConsumeNonce", got, attest)
	_, err = s.ConsumeNonce(ctx, "n-attest", now)
	wantErr(t, err, store.ErrNotFound)

	got, err = s.ConsumeNonce(ctx, "n-enroll", now)
	noErr(t, err)
	equal(t, "ConsumeNonce(enroll)", got, enroll)

	_, err = s.ConsumeNonce(ctx, "n-stale", now)
	wantErr(t, err, store.ErrNotFound)
	_, err = s.ConsumeNonce(ctx, "nope", now)
	wantErr(t, err, store.ErrNotFound)

	purged, err := s.PurgeNonces(ctx, now)
	noErr(t, err)
	equal(t, "PurgeNonces", purged, 1)
	purged, err = s.PurgeNonces(ctx, now)
	noErr(t, err)
	equal(t, "second PurgeNonces", purged, 0)
}

func testRotations(t *testing.T, s store.Store) {
	ctx := t.Context()
	r := store.Rotation{
		RotationID:     "rot-1",
		NodeID:         "n1",
		OldFingerprint: "SHA256:old",
		NewFingerprint: "SHA256:new",
		NewTokenJTI:    "jti-2",
		NewToken:       "header.claims.signature",
		At:             t0,
	}
	noErr(t, s.InsertRotation(ctx, r))
	got, err := s.GetRotation(ctx, "rot-1")
	noErr(t, err)
	equal(t, "GetRotation", got, r)

	dup := r
	dup.NewToken, dup.NewTokenJTI = "other", "jti-3"
	wantErr(t, s.InsertRotation(ctx, dup), store.ErrConflict)
	got, err = s.GetRotation(ctx, "rot-1")
	noErr(t, err)
	equal(t, "rotation after duplicate insert", got, r)

	_, err = s.GetRotation(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)
}

func testAudit(t *testing.T, s store.Store) {
	ctx := t.Context()
	before := time.Now().UTC().Truncate(time.Microsecond)
	e1, err := s.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "system", Action: "enroll", NodeID: "n1", Result: "ok"})
	noErr(t, err)
	after := time.Now().UTC()
	if e1.ID <= 0 {
		t.Fatalf("first audit ID = %d, want > 0", e1.ID)
	}
	if e1.At.Before(before) || e1.At.After(after) {
		t.Fatalf("defaulted At = %v, want within [%v, %v]", e1.At, before, after)
	}
	if e1.Details == nil || len(e1.Details) != 0 {
		t.Fatalf("nil Details returned as %#v, want empty map", e1.Details)
	}

	e2, err := s.AppendAudit(ctx, store.AuditEntry{At: at(time.Hour), TenantID: "t2", Actor: "op:tok-1", Action: "revoke", NodeID: "n2", Result: "ok"})
	noErr(t, err)
	equal(t, "explicit At", e2.At, at(time.Hour))
	e3, err := s.AppendAudit(ctx, store.AuditEntry{At: at(2 * time.Hour), TenantID: "t1", Actor: "node:n1", Action: "rotate", NodeID: "n1", Result: "key_in_use",
		Details: map[string]string{"rotation_id": "rot-1", "old": "SHA256:a", "quote": `"x"\n`}})
	noErr(t, err)
	if !(e1.ID < e2.ID && e2.ID < e3.ID) {
		t.Fatalf("audit IDs not increasing: %d, %d, %d", e1.ID, e2.ID, e3.ID)
	}

	list, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	equal(t, "ListAudit(all)", list, []store.AuditEntry{e1, e2, e3})
	list, err = s.ListAudit(ctx, "t1", 0, 0)
	noErr(t, err)
	equal(t, "ListAudit(t1)", list, []store.AuditEntry{e1, e3})
	list, err = s.ListAudit(ctx, "", e1.ID, 0)
	noErr(t, err)
	equal(t, "ListAudit(after e1)", list, []store.AuditEntry{e2, e3})
	list, err = s.ListAudit(ctx, "", 0, 2)
	noErr(t, err)
	equal(t, "ListAudit(limit 2)", list, []store.AuditEntry{e1, e2})
	list, err = s.ListAudit(ctx, "t1", e1.ID, 1)
	noErr(t, err)
	equal(t, "ListAudit(t1, after e1, limit 1)", list, []store.AuditEntry{e3})
	list, err = s.ListAudit(ctx, "t3", 0, 0)
	noErr(t, err)
	equal(t, "ListAudit(unknown tenant) length", len(list), 0)
}

func testInTxCommit(t *testing.T, s store.Store) {
	ctx := t.Context()
	err := s.InTx(ctx, func(tx store.Tx) error {
		mustTenant(t, tx, "t1")
		// Reads inside the transaction see its own writes.
		if _, err := tx.GetTenant(ctx, "t1"); err != nil {
			return err
		}
		mustDaemon(t, tx, daemon("n1", "t1"))
		_, err := tx.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "system", Action: "enroll", NodeID: "n1", Result: "ok"})
		return err
	})
	noErr(t, err)
	getDaemon(t, s, "n1")
	list, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	equal(t, "audit entries after commit", len(list), 1)
}

func testInTxRollback(t *testing.T, s store.Store) {
	ctx := t.Context()
	boom := errors.New("boom")
	k := pubkey("k")
	err := s.InTx(ctx, func(tx store.Tx) error {
		mustTenant(t, tx, "t1")
		noErr(t, tx.ClaimPublicKey(ctx, k, "n1", t0))
		mustDaemon(t, tx, daemon("n1", "t1"))
		if _, err := tx.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "system", Action: "enroll", Result: "ok"}); err != nil {
			return err
		}
		return boom
	})
	if err != boom { // "unchanged": the very same value, not a wrapper
		t.Fatalf("InTx returned %v, want fn's error unchanged", err)
	}
	_, err = s.GetTenant(ctx, "t1")
	wantErr(t, err, store.ErrNotFound)
	_, err = s.GetDaemon(ctx, "n1")
	wantErr(t, err, store.ErrNotFound)
	list, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	equal(t, "audit entries after rollback", len(list), 0)
	noErr(t, s.ClaimPublicKey(ctx, k, "n2", t0)) // the rolled-back claim left no trace

	// A store sentinel passed through fn keeps its identity for errors.Is.
	err = s.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.GetRotation(ctx, "nope")
		return fmt.Errorf("rotation lookup: %w", err)
	})
	wantErr(t, err, store.ErrNotFound)
}

func testInTxPanic(t *testing.T, s store.Store) {
	ctx := t.Context()
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("recovered %v, want the panic to propagate from InTx", r)
			}
		}()
		_ = s.InTx(ctx, func(tx store.Tx) error {
			mustTenant(t, tx, "t1")
			panic("kaboom")
		})
	}()
	_, err := s.GetTenant(ctx, "t1")
	wantErr(t, err, store.ErrNotFound)
	// The connection the panicking transaction held must be usable again.
	noErr(t, s.InTx(ctx, func(tx store.Tx) error { return tx.CreateTenant(ctx, store.Tenant{ID: "t2", Kind: store.TenantTeam}) }))
	_, err = s.GetTenant(ctx, "t2")
	noErr(t, err)
}

// The domain records a failed step (a lost CAS, a reused key) and still commits the
// audit line in the same transaction; PostgreSQL aborts a transaction on any raised
// error, so expected failures must not be raised as SQL errors.
func testInTxUsableAfterSentinel(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	mustDaemon(t, s, d)
	noErr(t, s.ClaimPublicKey(ctx, d.PublicKey, "n1", t0))
	noErr(t, s.CreateEnrollmentToken(ctx, enrollmentToken("used", "t1", t0)))
	noErr(t, s.ConsumeEnrollmentToken(ctx, "used", "n1", at(time.Second)))
	noErr(t, s.InsertRotation(ctx, store.Rotation{RotationID: "rot-1", NodeID: "n1", At: t0}))
	noErr(t, s.InsertNonce(ctx, store.Nonce{Value: "nonce", Purpose: "attest", ExpiresAt: at(time.Hour)}))

	err := s.InTx(ctx, func(tx store.Tx) error {
		wantErr(t, tx.CreateTenant(ctx, store.Tenant{ID: "t1", Kind: store.TenantTeam}), store.ErrConflict)
		wantErr(t, tx.ClaimPublicKey(ctx, d.PublicKey, "n2", t0), store.ErrKeyInUse)
		wantErr(t, tx.InsertDaemon(ctx, d), store.ErrConflict)
		other := daemon("n2", "t1")
		other.PublicKey = d.PublicKey
		wantErr(t, tx.InsertDaemon(ctx, other), store.ErrKeyInUse)
		wantErr(t, tx.SwapDaemonKey(ctx, "n1", pubkey("wrong"), pubkey("new"), at(time.Minute), t0), store.ErrConflict)
		wantErr(t, tx.SwapDaemonKey(ctx, "n1", d.PublicKey, d.PublicKey, at(time.Minute), t0), store.ErrKeyInUse)
		wantErr(t, tx.ConsumeEnrollmentToken(ctx, "used", "n2", at(time.Second)), store.ErrTokenUsed)
		wantErr(t, tx.InsertRotation(ctx, store.Rotation{RotationID: "rot-1", NodeID: "n1", At: t0}), store.ErrConflict)
		wantErr(t, tx.InsertNonce(ctx, store.Nonce{Value: "nonce", Purpose: "attest", ExpiresAt: at(time.Hour)}), store.ErrConflict)
		_, err := tx.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "node:n1", Action: "rotate", NodeID: "n1", Result: "conflict"})
		return err
	})
	noErr(t, err)
	list, err := s.ListAudit(ctx, "t1", 0, 0)
	noErr(t, err)
	equal(t, "audit entries committed after failed steps", len(list), 1)
}

const racers = 32

// rotate is the shape of the domain's rotation transaction: the CAS from oldKey is
// what decides the winner; everything else must commit or vanish with it.
func rotate(s store.Store, t *testing.T, nodeID string, oldKey []byte, i int) error {
	ctx := t.Context()
	newKey := pubkey(fmt.Sprintf("%s-new-%d", nodeID, i))
	return s.InTx(ctx, func(tx store.Tx) error {
		if _, err := tx.GetDaemon(ctx, nodeID); err != nil {
			return err
		}
		if err := tx.ClaimPublicKey(ctx, newKey, nodeID, t0); err != nil {
			return err
		}
		if err := tx.SwapDaemonKey(ctx, nodeID, oldKey, newKey, at(time.Minute), t0); err != nil {
			return err
		}
		if err := tx.BlacklistToken(ctx, store.BlacklistEntry{JTI: nodeID + "-jti-0", NodeID: nodeID, Reason: "rotated", ExpiresAt: at(time.Hour), AddedAt: t0}); err != nil {
			return err
		}
		jti := fmt.Sprintf("%s-jti-%d", nodeID, i+1)
		if err := tx.InsertNodeToken(ctx, store.NodeToken{JTI: jti, NodeID: nodeID, IssuedAt: t0, ExpiresAt: at(time.Hour)}); err != nil {
			return err
		}
		if err := tx.InsertRotation(ctx, store.Rotation{RotationID: fmt.Sprintf("%s-rot-%d", nodeID, i), NodeID: nodeID, NewTokenJTI: jti, At: t0}); err != nil {
			return err
		}
		_, err := tx.AppendAudit(ctx, store.AuditEntry{TenantID: "t1", Actor: "node:" + nodeID, Action: "rotate", NodeID: nodeID, Result: "ok"})
		return err
	})
}

func testConcurrentSwap(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	d := daemon("n1", "t1")
	mustDaemon(t, s, d)

	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			errs[i] = rotate(s, t, "n1", d.PublicKey, i)
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("racers %d and %d both won the CAS", winner, i)
			}
			winner = i
		case errors.Is(err, store.ErrConflict):
		default:
			t.Fatalf("racer %d: unexpected error %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no racer won the CAS")
	}
	got := getDaemon(t, s, "n1")
	equal(t, "winner's key installed", got.PublicKey, pubkey(fmt.Sprintf("n1-new-%d", winner)))
	equal(t, "previous key", got.PreviousPublicKey, d.PublicKey)
	list, err := s.ListAudit(ctx, "", 0, 0)
	noErr(t, err)
	equal(t, "audit entries", len(list), 1)
	for i := range racers {
		_, err := s.GetRotation(ctx, fmt.Sprintf("n1-rot-%d", i))
		if i == winner {
			noErr(t, err)
			continue
		}
		wantErr(t, err, store.ErrNotFound)
		// Losers' claims rolled back with the rest of their transaction.
		noErr(t, s.ClaimPublicKey(ctx, pubkey(fmt.Sprintf("n1-new-%d", i)), "other", t0))
	}
}

func testConcurrentConsume(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustTenant(t, s, "t1")
	noErr(t, s.CreateEnrollmentToken(ctx, enrollmentToken("tok", "t1", t0)))

	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			nodeID := fmt.Sprintf("n%d", i)
			errs[i] = s.InTx(ctx, func(tx store.Tx) error {
				if err := tx.ConsumeEnrollmentToken(ctx, "tok", nodeID, at(time.Minute)); err != nil {
					return err
				}
				if err := tx.ClaimPublicKey(ctx, pubkey(nodeID), nodeID, at(time.Minute)); err != nil {
					return err
				}
				return tx.InsertDaemon(ctx, daemon(nodeID, "t1"))
			})
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("racers %d and %d both consumed the token", winner, i)
			}
			winner = i
		case errors.Is(err, store.ErrTokenUsed):
		default:
			t.Fatalf("racer %d: unexpected error %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no racer consumed the token")
	}
	tok, err := s.GetEnrollmentToken(ctx, "tok")
	noErr(t, err)
	equal(t, "token used by", tok.UsedBy, fmt.Sprintf("n%d", winner))
	list, err := s.ListDaemons(ctx, store.DaemonFilter{})
	noErr(t, err)
	if len(list) != 1 || list[0].NodeID != tok.UsedBy {
		t.Fatalf("daemons after race = %+v, want only %s", list, tok.UsedBy)
	}
}

// Rotations of different daemons must all succeed side by side: no busy errors, no
// spurious conflicts from one daemon's CAS onto another's.
func testConcurrentIndependentRotations(t *testing.T, s store.Store) {
	mustTenant(t, s, "t1")
	keys := make([][]byte, racers)
	for i := range racers {
		d := daemon(fmt.Sprintf("n%d", i), "t1")
		mustDaemon(t, s, d)
		keys[i] = d.PublicKey
	}
	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			errs[i] = rotate(s, t, fmt.Sprintf("n%d", i), keys[i], 0)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("rotation of n%d: %v", i, err)
		}
	}
	for i := range racers {
		nodeID := fmt.Sprintf("n%d", i)
		equal(t, nodeID+" key", getDaemon(t, s, nodeID).PublicKey, pubkey(nodeID+"-new-0"))
	}
}

func testPing(t *testing.T, s store.Store) {
	noErr(t, s.Ping(t.Context()))
}
