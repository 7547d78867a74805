package rpc_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/enrolltoken"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func TestEnrollSuccess(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		who, err := srv.AdminClient().WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		text := srv.EnrollmentToken(t, "web", "prod")
		tok, err := enrolltoken.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		if tok.Server != srv.URL {
			t.Errorf("token server = %q, want %q", tok.Server, srv.URL)
		}
		n := enroll(t, srv, text)
		if !slices.Equal(n.tags, []string{"web", "prod"}) {
			t.Errorf("tags = %v", n.tags)
		}
		if n.tenant.GetId() != who.Msg.GetTenant().GetId() || n.tenant.GetName() != "default" || n.tenant.GetKind() != "team" {
			t.Errorf("tenant = %v, want the default tenant %v", n.tenant, who.Msg.GetTenant())
		}
		claims, err := nodetoken.Peek(n.token)
		if err != nil {
			t.Fatal(err)
		}
		if claims.NodeID() != n.id || claims.TenantID != n.tenant.GetId() {
			t.Errorf("token claims %+v do not name node %s / tenant %s", claims, n.id, n.tenant.GetId())
		}
		d, err := srv.Store.GetDaemon(ctx, n.id)
		if err != nil {
			t.Fatal(err)
		}
		if string(d.PublicKey) != string(n.pub) || d.Status != store.DaemonActive {
			t.Errorf("stored daemon %+v does not hold the enrolled key", d)
		}
		et, err := srv.Store.GetEnrollmentToken(ctx, tok.ID)
		if err != nil {
			t.Fatal(err)
		}
		if et.UsedBy != n.id || et.UsedAt.IsZero() {
			t.Errorf("enrollment token not marked used by %s: %+v", n.id, et)
		}
	})
}

func TestEnrollRefusals(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		c := srv.ClusterClient()

		t.Run("token reuse", func(t *testing.T) {
			text := srv.EnrollmentToken(t)
			enroll(t, srv, text)
			pub, priv := newKey(t)
			_, err := c.Enroll(ctx, connect.NewRequest(enrollRequest(t, c, text, pub, priv)))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_USED)
		})
		t.Run("wrong secret", func(t *testing.T) {
			text := srv.EnrollmentToken(t)
			pub, priv := newKey(t)
			req := enrollRequest(t, c, text, pub, priv)
			req.EnrollmentSecret = "00000000000000000000000000000000"
			_, err := c.Enroll(ctx, connect.NewRequest(req))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_INVALID)
			msgWrong := err.(*connect.Error).Message()
			// An unknown id gets the very same refusal.
			req = enrollRequest(t, c, text, pub, priv)
			req.EnrollmentTokenId = "0123456789abcdef"
			req.Signature = nil
			_, err = c.Enroll(ctx, connect.NewRequest(signEnroll(req, priv)))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_INVALID)
			if m := err.(*connect.Error).Message(); m != msgWrong {
				t.Errorf("unknown id message %q differs from wrong secret message %q", m, msgWrong)
			}
			assertNoDaemonWith(t, srv, pub)
		})
		t.Run("expired", func(t *testing.T) {
			text := srv.EnrollmentToken(t)
			clock.Advance(16 * time.Minute)
			pub, priv := newKey(t)
			_, err := c.Enroll(ctx, connect.NewRequest(enrollRequest(t, c, text, pub, priv)))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_EXPIRED)
			assertNoDaemonWith(t, srv, pub)
		})
		t.Run("revoked", func(t *testing.T) {
			text := srv.EnrollmentToken(t)
			tok, _ := enrolltoken.Parse(text)
			if _, err := srv.AdminClient().RevokeEnrollmentToken(ctx, connect.NewRequest(&edgev1.RevokeEnrollmentTokenRequest{Id: tok.ID})); err != nil {
				t.Fatal(err)
			}
			pub, priv := newKey(t)
			_, err := c.Enroll(ctx, connect.NewRequest(enrollRequest(t, c, text, pub, priv)))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_REVOKED)
		})
		t.Run("nonce reuse", func(t *testing.T) {
			text1, text2 := srv.EnrollmentToken(t), srv.EnrollmentToken(t)
			pub, priv := newKey(t)
			req := enrollRequest(t, c, text1, pub, priv)
			if _, err := c.Enroll(ctx, connect.NewRequest(req)); err != nil {
				t.Fatal(err)
			}
			tok2, _ := enrolltoken.Parse(text2)
			pub2, priv2 := newKey(t)
			req2 := &edgev1.EnrollRequest{EnrollmentTokenId: tok2.ID, EnrollmentSecret: tok2.Secret, PublicKey: pub2, Nonce: req.Nonce}
			_, err := c.Enroll(ctx, connect.NewRequest(signEnroll(req2, priv2)))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_NONCE_INVALID)
			// Nothing was written: token 2 is still good.
			if et, _ := srv.Store.GetEnrollmentToken(ctx, tok2.ID); !et.UsedAt.IsZero() {
				t.Errorf("token 2 consumed by a refused enrollment")
			}
		})
		t.Run("proof by another key", func(t *testing.T) {
			text := srv.EnrollmentToken(t)
			pub, _ := newKey(t)
			_, other := newKey(t)
			_, err := c.Enroll(ctx, connect.NewRequest(enrollRequest(t, c, text, pub, other)))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
			tok, _ := enrolltoken.Parse(text)
			if et, _ := srv.Store.GetEnrollmentToken(ctx, tok.ID); !et.UsedAt.IsZero() {
				t.Errorf("token consumed by a refused enrollment")
			}
		})
		t.Run("key in use", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			text := srv.EnrollmentToken(t)
			_, err := c.Enroll(ctx, connect.NewRequest(enrollRequest(t, c, text, n.pub, n.key)))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_IN_USE)
			tok, _ := enrolltoken.Parse(text)
			if et, _ := srv.Store.GetEnrollmentToken(ctx, tok.ID); !et.UsedAt.IsZero() {
				t.Errorf("token consumed by a refused enrollment")
			}
		})
		t.Run("short key", func(t *testing.T) {
			text := srv.EnrollmentToken(t)
			pub, priv := newKey(t)
			req := enrollRequest(t, c, text, pub, priv)
			req.PublicKey = pub[:16]
			_, err := c.Enroll(ctx, connect.NewRequest(req))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_INVALID)
		})
	})
}

func signEnroll(req *edgev1.EnrollRequest, priv []byte) *edgev1.EnrollRequest {
	req.Signature = signWith(priv, req.GetNonce(), req.GetEnrollmentTokenId(), req.GetPublicKey())
	return req
}

func assertNoDaemonWith(t *testing.T, srv *cptest.Server, pub []byte) {
	t.Helper()
	ds, err := srv.Store.ListDaemons(context.Background(), store.DaemonFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if string(d.PublicKey) == string(pub) {
			t.Fatalf("a refused enrollment left daemon %s behind", d.NodeID)
		}
	}
}
