package nodeauth_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
	"google.golang.org/protobuf/types/known/emptypb"
)

// The issuer remembers the tokens whose signature it has established, so a token
// verified once (or issued by this process) is not parsed again. These tests hold
// that nothing else is remembered: a cached token whose node was revoked, which was
// blacklisted, or which expired is refused at once with its own reason.

type fixture struct {
	st     store.Store
	auth   *nodeauth.Service
	black  *tokens.Blacklist
	issuer *tokens.Issuer
	now    atomic.Pointer[time.Time]
	nodeID string
	key    ed25519.PrivateKey
	token  tokens.Issued
	seq    int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aegis.db"))
	noErr(t, err)
	t.Cleanup(func() { _ = st.Close() })
	f := &fixture{st: st, nodeID: "n-0000000000a1"}
	start := time.Now().UTC().Truncate(time.Second)
	f.now.Store(&start)
	clock := func() time.Time { return *f.now.Load() }
	sk, err := tokens.NewSigningKey(rand.Reader, start)
	noErr(t, err)
	noErr(t, st.InsertSigningKey(ctx, sk))
	f.issuer, err = tokens.LoadIssuer(ctx, st, time.Hour)
	noErr(t, err)
	noErr(t, st.CreateTenant(ctx, store.Tenant{ID: "t1", Name: "t1", Kind: store.TenantTeam, CreatedAt: start}))
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	noErr(t, err)
	d := store.Daemon{NodeID: f.nodeID, TenantID: "t1", DisplayName: "h1", PublicKey: pub, Status: store.DaemonActive, EnrolledAt: start}
	noErr(t, st.ClaimPublicKey(ctx, pub, d.NodeID, start))
	noErr(t, st.InsertDaemon(ctx, d))
	f.token, err = f.issuer.Issue(d, pub, start)
	noErr(t, err)
	noErr(t, st.InsertNodeToken(ctx, f.token.Record))
	f.key = priv
	f.black = tokens.NewBlacklist(nil)
	f.auth = nodeauth.New(nodeauth.Config{Store: st, Issuer: f.issuer, Blacklist: f.black, Now: clock, MaxClockSkew: time.Minute})
	return f
}

func (f *fixture) advance(d time.Duration) {
	next := f.now.Load().Add(d)
	f.now.Store(&next)
}

// envelope is a Logout-kind envelope (any unary kind does) on a stream of its own.
func (f *fixture) envelope(t *testing.T) *edgev1.SealNodeEnvelope {
	t.Helper()
	f.seq++
	env, err := seal.Seal(f.key, seal.Header{
		Kind: edgev1.EnvelopeKind_ENVELOPE_KIND_LOGOUT, Token: f.token.Token, NodeID: f.nodeID,
		StreamID: fmt.Sprintf("stream-%08d", f.seq), Sequence: 1, Time: *f.now.Load(),
	}, &emptypb.Empty{})
	noErr(t, err)
	return env
}

func (f *fixture) check(t *testing.T) error {
	t.Helper()
	_, err := f.auth.CheckUnary(t.Context(), f.st, edgev1.EnvelopeKind_ENVELOPE_KIND_LOGOUT, f.envelope(t))
	return err
}

// accepted checks that the token is good, so the issuer has verified it.
func (f *fixture) accepted(t *testing.T) {
	t.Helper()
	for range 2 {
		noErr(t, f.check(t))
	}
}

func TestCachedTokenOfRevokedNode(t *testing.T) {
	f := newFixture(t)
	f.accepted(t)
	noErr(t, f.st.RevokeDaemon(t.Context(), f.nodeID, *f.now.Load()))
	wantReason(t, f.check(t), edgev1.RejectReason_REJECT_REASON_REVOKED)
}

func TestCachedTokenBlacklisted(t *testing.T) {
	for _, reason := range []string{nodeauth.BlacklistReasonRefreshed, nodeauth.BlacklistReasonLogout, nodeauth.BlacklistReasonRevoked, nodeauth.BlacklistReasonRotated} {
		t.Run(reason, func(t *testing.T) {
			f := newFixture(t)
			f.accepted(t)
			f.black.Add(store.BlacklistEntry{JTI: f.token.Claims.JTI(), NodeID: f.nodeID, Reason: reason, ExpiresAt: f.token.Claims.Expires(), AddedAt: *f.now.Load()})
			wantReason(t, f.check(t), edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED)
		})
	}
}

func TestCachedTokenExpired(t *testing.T) {
	f := newFixture(t)
	f.accepted(t)
	f.advance(f.token.Claims.Expires().Sub(*f.now.Load()))
	wantReason(t, f.check(t), edgev1.RejectReason_REJECT_REASON_TOKEN_EXPIRED)
}

// A cached token no longer bound to the node's key (it rotated) is refused too.
func TestCachedTokenOfReplacedKey(t *testing.T) {
	f := newFixture(t)
	f.accepted(t)
	newPub, _, err := ed25519.GenerateKey(rand.Reader)
	noErr(t, err)
	noErr(t, f.st.ClaimPublicKey(t.Context(), newPub, f.nodeID, *f.now.Load()))
	noErr(t, f.st.SwapDaemonKey(t.Context(), f.nodeID, f.key.Public().(ed25519.PublicKey), newPub, f.now.Load().Add(time.Minute), *f.now.Load()))
	// Inside the overlap, a new stream with the old token names it withdrawn.
	wantReason(t, f.check(t), edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED)
	f.advance(2 * time.Minute)
	wantReason(t, f.check(t), edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH)
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantReason(t *testing.T, err error, want edgev1.RejectReason) {
	t.Helper()
	if got := rejection.Reason(err); got != want {
		t.Fatalf("refusal %v (%v), want %v", got, err, want)
	}
}
