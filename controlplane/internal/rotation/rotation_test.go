package rotation_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/rotation"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
	"google.golang.org/protobuf/proto"
)

// roundTrips counts what the pool sends to PostgreSQL for contexts marked with
// counted: each statement outside a batch and each batch is one round trip.
type roundTrips struct {
	mu   sync.Mutex
	sent []string
}

type countedKey struct{}

func counted(ctx context.Context) context.Context { return context.WithValue(ctx, countedKey{}, true) }

func (r *roundTrips) add(ctx context.Context, what string) {
	if ctx.Value(countedKey{}) == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, what)
}

func (r *roundTrips) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.sent
	r.sent = nil
	return out
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.add(ctx, strings.Join(strings.Fields(d.SQL), " "))
	return ctx
}

func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	r.add(ctx, fmt.Sprintf("batch of %d statements", d.Batch.Len()))
	return ctx
}

func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// fixture is a rotation Service on st with one enrolled node.
type fixture struct {
	svc    *rotation.Service
	st     store.Store
	now    time.Time
	nodeID string
	key    ed25519.PrivateKey
	token  string
}

func newFixture(t *testing.T, st store.Store) *fixture {
	t.Helper()
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Microsecond)
	clock := func() time.Time { return now }
	sk, err := tokens.NewSigningKey(rand.Reader, now)
	noErr(t, err)
	noErr(t, st.InsertSigningKey(ctx, sk))
	issuer, err := tokens.LoadIssuer(ctx, st, time.Hour)
	noErr(t, err)
	noErr(t, st.CreateTenant(ctx, store.Tenant{ID: "t1", Name: "t1", Kind: store.TenantTeam, CreatedAt: now}))
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	noErr(t, err)
	d := store.Daemon{NodeID: "n1", TenantID: "t1", DisplayName: "n1", PublicKey: pub, Status: store.DaemonActive, EnrolledAt: now}
	noErr(t, st.ClaimPublicKey(ctx, pub, d.NodeID, now))
	noErr(t, st.InsertDaemon(ctx, d))
	issued, err := issuer.Issue(d, pub, now)
	noErr(t, err)
	noErr(t, st.InsertNodeToken(ctx, issued.Record))
	black := tokens.NewBlacklist(nil)
	auth := nodeauth.New(nodeauth.Config{Store: st, Issuer: issuer, Blacklist: black, Now: clock, MaxClockSkew: time.Minute})
	svc := rotation.New(rotation.Config{Store: st, Auth: auth, Issuer: issuer, Blacklist: black, Now: clock, MaxClockSkew: time.Minute})
	return &fixture{svc: svc, st: st, now: now, nodeID: d.NodeID, key: priv, token: issued.Token}
}

// request is a rotation of the fixture's node from its current key to newKey.
func (f *fixture) request(t *testing.T, rotationID string, newKey ed25519.PublicKey, newPriv ed25519.PrivateKey) rotation.Request {
	t.Helper()
	oldPub := f.key.Public().(ed25519.PublicKey)
	p := &edgev1.RotateEdgeKeyRequest{
		RotationId:      rotationID,
		NodeId:          f.nodeID,
		NewPublicKey:    newKey,
		TimestampUnixMs: f.now.UnixMilli(),
		NewKeySignature: ed25519.Sign(newPriv, seal.RotateNewKeyMessage(rotationID, f.nodeID, oldPub, newKey, time.UnixMilli(f.now.UnixMilli()))),
	}
	env, err := seal.Seal(f.key, seal.Header{
		Kind: edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, Token: f.token, NodeID: f.nodeID,
		StreamID: "stream-" + rotationID, Sequence: 1, Time: f.now,
	}, p)
	noErr(t, err)
	var back edgev1.RotateEdgeKeyRequest
	noErr(t, proto.Unmarshal(env.GetPayload(), &back))
	return rotation.Request{
		Envelope: env, RotationID: back.GetRotationId(), NodeID: back.GetNodeId(), NewPublicKey: back.GetNewPublicKey(),
		At: time.UnixMilli(back.GetTimestampUnixMs()), NewKeySignature: back.GetNewKeySignature(),
	}
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	noErr(t, err)
	return pub, priv
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
		t.Fatalf("error = %v (reason %s), want reason %s", err, got, want)
	}
}

// A fresh rotation on PostgreSQL costs three round trips: the node's record (read
// outside the transaction, for the signature checks), one batch of BEGIN and every
// write, and COMMIT. It took ten when each write was its own statement.
func TestPostgresRoundTrips(t *testing.T) {
	trace := &roundTrips{}
	st, err := postgres.Open(t.Context(), pgtest.Fresh(t, pgtest.URL(t)), postgres.Options{Tracer: trace})
	noErr(t, err)
	t.Cleanup(func() { _ = st.Close() })
	f := newFixture(t, st)

	// The first batch on a connection also prepares its statements; measure the
	// second rotation, on warm connections, as a running server does.
	for i := range 2 {
		pub, priv := newKey(t)
		req := f.request(t, fmt.Sprintf("rotation-%04d", i), pub, priv)
		res, err := f.svc.Rotate(counted(t.Context()), req)
		noErr(t, err)
		sent := trace.take()
		t.Logf("rotation %d: %d round trips: %q", i, len(sent), sent)
		if i == 1 && len(sent) > 3 {
			t.Errorf("a rotation took %d round trips, want at most 3: %q", len(sent), sent)
		}
		f.key, f.token = priv, res.Token
	}
}

// The one-step path and the step-by-step path agree on every answer: a retry
// replays, a reused key and a reused rotation id are refused with their reasons, on
// both stores.
func TestRotateAnswers(t *testing.T) {
	stores := map[string]func(t *testing.T) store.Store{
		"sqlite": func(t *testing.T) store.Store {
			st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "aegis.db"))
			noErr(t, err)
			t.Cleanup(func() { _ = st.Close() })
			return st
		},
		"postgres": func(t *testing.T) store.Store {
			st, err := postgres.Open(t.Context(), pgtest.Fresh(t, pgtest.URL(t)))
			noErr(t, err)
			t.Cleanup(func() { _ = st.Close() })
			return st
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			f := newFixture(t, open(t))
			oldPriv := f.key
			oldPub := oldPriv.Public().(ed25519.PublicKey)
			pub, priv := newKey(t)
			req := f.request(t, "rotation-0001", pub, priv)
			first, err := f.svc.Rotate(ctx, req)
			noErr(t, err)
			if first.Replayed {
				t.Fatal("the first rotation says it was replayed")
			}
			again, err := f.svc.Rotate(ctx, req)
			noErr(t, err)
			if !again.Replayed || again.Token != first.Token || !again.RotatedAt.Equal(first.RotatedAt) {
				t.Fatalf("retry = %+v, want the first answer %+v replayed", again, first)
			}
			d, err := f.st.GetDaemon(ctx, f.nodeID)
			noErr(t, err)
			if string(d.PublicKey) != string(pub) || string(d.PreviousPublicKey) != string(oldPub) {
				t.Fatal("the node's keys are not the new one and the old one")
			}
			audit, err := f.st.ListNodeAudit(ctx, "t1", f.nodeID, 0, 0)
			noErr(t, err)
			if len(audit) != 1 || audit[0].Action != "rotate" || audit[0].Details["rotation_id"] != "rotation-0001" {
				t.Fatalf("audit = %+v, want the one rotation", audit)
			}

			f.key, f.token = priv, first.Token
			// The key the node had before: claimed forever.
			_, err = f.svc.Rotate(ctx, f.request(t, "rotation-0002", oldPub, oldPriv))
			wantReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_IN_USE)
			// A key another rotation already claimed (the node's current one would be
			// refused earlier, as the current key).
			claimed, claimedPriv := newKey(t)
			noErr(t, f.st.ClaimPublicKey(ctx, claimed, "elsewhere", f.now))
			_, err = f.svc.Rotate(ctx, f.request(t, "rotation-0003", claimed, claimedPriv))
			wantReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_IN_USE)
			// The first rotation's id, for another key.
			other, otherPriv := newKey(t)
			_, err = f.svc.Rotate(ctx, f.request(t, "rotation-0001", other, otherPriv))
			wantReason(t, err, edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT)
			for _, k := range [][]byte{other} {
				if _, err := f.st.KeyOwner(ctx, k); err == nil {
					t.Fatal("a refused rotation claimed its key")
				}
			}
			audit, err = f.st.ListNodeAudit(ctx, "t1", f.nodeID, 0, 0)
			noErr(t, err)
			if len(audit) != 1 {
				t.Fatalf("refused rotations left audit entries: %+v", audit)
			}
		})
	}
}
