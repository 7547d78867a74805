package rpc_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// expectDisconnect reads the next command within limit and checks it is
// Disconnect{want}, after which the stream ends cleanly.
func (s *stream) expectDisconnect(want edgev1.DisconnectReason, since time.Time, limit time.Duration) {
	s.t.Helper()
	got := make(chan *edgev1.EdgeCommand, 1)
	errc := make(chan error, 1)
	go func() {
		cmd, err := s.recv()
		if err != nil {
			errc <- err
			return
		}
		got <- cmd
	}()
	select {
	case cmd := <-got:
		if cmd.GetDisconnect().GetReason() != want {
			s.t.Fatalf("got %v, want Disconnect{%s}", cmd, want)
		}
		if took := time.Since(since); took > limit {
			s.t.Fatalf("Disconnect arrived %s after the call returned, want within %s", took, limit)
		}
	case err := <-errc:
		s.t.Fatalf("stream ended without Disconnect: %v (reason %s)", err, reject.Reason(err))
	case <-time.After(limit):
		s.t.Fatalf("no Disconnect within %s", limit)
	}
	if cmd, err := s.recv(); !errors.Is(err, io.EOF) {
		s.t.Fatalf("after Disconnect: %v, %v; want the stream to end", cmd, err)
	}
}

// revokedEverywhere checks every door is shut to a revoked node: attest, a new
// stream, a rotation, and enrolling again with the same key.
func revokedEverywhere(t *testing.T, srv *cptest.Server, n *node) {
	t.Helper()
	_, err := n.attest(t)
	expectReason(t, err, edgev1.RejectReason_REJECT_REASON_REVOKED)
	st := n.open(t, time.Now)
	st.send(st.envelope(hello(), nil))
	st.expectReject(edgev1.RejectReason_REJECT_REASON_REVOKED)
	_, err = n.rotate(t, n.newRotation(t, time.Now()), time.Now())
	expectReason(t, err, edgev1.RejectReason_REJECT_REASON_REVOKED)
	c := srv.ClusterClient()
	_, err = c.Enroll(context.Background(), connect.NewRequest(enrollRequest(t, c, srv.EnrollmentToken(t), n.pub, n.key)))
	expectReason(t, err, edgev1.RejectReason_REJECT_REASON_REVOKED)

	if toks, err := srv.Store.ActiveNodeTokens(context.Background(), n.id, time.Now()); err != nil || len(toks) != 0 {
		t.Fatalf("active tokens of a revoked node: %v %v", toks, err)
	}
	if got := hostStatus(t, srv, n.id); got != edgev1.HostStatus_HOST_STATUS_REVOKED {
		t.Fatalf("status %s, want REVOKED", got)
	}
}

func blacklistReason(t *testing.T, srv *cptest.Server, token string) string {
	t.Helper()
	bl, err := srv.Store.ListBlacklist(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range bl {
		if e.JTI == jti(t, token) {
			return e.Reason
		}
	}
	return ""
}

func TestRevokeHost(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		n := enroll(t, srv, srv.EnrollmentToken(t))
		st := n.open(t, time.Now)
		st.hello()
		st.heartbeat()
		waitStatus(t, srv, n.id, edgev1.HostStatus_HOST_STATUS_CONNECTED)

		// Callers who may not revoke it change nothing.
		who, err := srv.AdminClient().WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Store.CreateTenant(ctx, store.Tenant{ID: "t-bbbbbbbb", Name: "b", Kind: store.TenantTeam}); err != nil {
			t.Fatal(err)
		}
		_, err = srv.AdminClientWithToken(mintToken(t, srv, "t-bbbbbbbb", store.RoleOperator)).RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id}))
		if code(err) != connect.CodeNotFound {
			t.Fatalf("operator of another tenant: %v, want NotFound", err)
		}
		_, err = srv.AdminClientWithToken(mintToken(t, srv, who.Msg.GetTenant().GetId(), store.RoleViewer)).RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id}))
		if code(err) != connect.CodePermissionDenied {
			t.Fatalf("viewer: %v, want PermissionDenied", err)
		}
		_, err = srv.AdminClient().RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: "n-000000000000"}))
		if code(err) != connect.CodeNotFound {
			t.Fatalf("unknown node: %v, want NotFound", err)
		}
		st.heartbeat()

		operator := srv.AdminClientWithToken(mintToken(t, srv, who.Msg.GetTenant().GetId(), store.RoleOperator))
		resp, err := operator.RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id}))
		returned := time.Now()
		if err != nil {
			t.Fatalf("RevokeHost: %v", err)
		}
		st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, returned, time.Second)
		if resp.Msg.GetHost().GetStatus() != edgev1.HostStatus_HOST_STATUS_REVOKED || resp.Msg.GetBlacklistedTokens() != 1 || !resp.Msg.GetStreamDropped() {
			t.Errorf("RevokeHost answered %v", resp.Msg)
		}
		if got := blacklistReason(t, srv, n.token); got != "revoked" {
			t.Errorf("token blacklisted as %q, want revoked", got)
		}
		var revokes []store.AuditEntry
		for _, e := range auditActions(t, srv, n.id) {
			if e.Action == "revoke" {
				revokes = append(revokes, e)
			}
		}
		if len(revokes) != 1 || revokes[0].Actor[:3] != "op:" {
			t.Errorf("revoke audit entries = %+v", revokes)
		}
		revokedEverywhere(t, srv, n)

		// Revoking again is harmless and reports nothing more to do.
		again, err := srv.AdminClient().RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id}))
		if err != nil {
			t.Fatal(err)
		}
		if again.Msg.GetBlacklistedTokens() != 0 || again.Msg.GetStreamDropped() {
			t.Errorf("second revoke answered %v", again.Msg)
		}
	})
}

func (n *node) logout(t *testing.T, signer ed25519.PrivateKey, payload *edgev1.LogoutRequest) error {
	t.Helper()
	_, err := n.client.Logout(context.Background(), connect.NewRequest(
		n.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_LOGOUT, signer, n.token, payload, time.Now())))
	return err
}

func TestLogout(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		other := enroll(t, srv, srv.EnrollmentToken(t))
		st := n.open(t, time.Now)
		st.hello()

		_, stranger := newKey(t)
		expectReason(t, n.logout(t, stranger, &edgev1.LogoutRequest{NodeId: n.id}), edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
		expectReason(t, n.logout(t, n.key, &edgev1.LogoutRequest{NodeId: other.id}), edgev1.RejectReason_REJECT_REASON_MALFORMED)
		_, err := n.client.Logout(context.Background(), connect.NewRequest(
			n.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, n.key, n.token, &edgev1.LogoutRequest{NodeId: n.id}, time.Now())))
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_MALFORMED)
		st.heartbeat() // still trusted
		if got := getDaemon(t, srv, n.id).Status; got != store.DaemonActive {
			t.Fatalf("refused logouts left status %s", got)
		}

		if err := n.logout(t, n.key, &edgev1.LogoutRequest{NodeId: n.id}); err != nil {
			t.Fatalf("Logout: %v (reason %s)", err, reject.Reason(err))
		}
		st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, time.Now(), time.Second)
		if got := blacklistReason(t, srv, n.token); got != "logout" {
			t.Errorf("token blacklisted as %q, want logout", got)
		}
		logouts := 0
		for _, e := range auditActions(t, srv, n.id) {
			if e.Action == "logout" && e.Actor == "node:"+n.id {
				logouts++
			}
		}
		if logouts != 1 {
			t.Errorf("%d logout audit entries, want 1", logouts)
		}
		revokedEverywhere(t, srv, n)
		// The other node is untouched.
		other.open(t, time.Now).hello()
	})
}

// The control plane can ask a live daemon to refresh its token or rotate its key,
// down the daemon's own stream; the daemon then does so without leaving the stream.
func TestServerCommands(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		if err := srv.RequestTokenRefresh(n.id); err == nil {
			t.Fatal("RequestTokenRefresh without a stream succeeded")
		}
		if err := srv.RequestKeyRotation(n.id, time.Hour); err == nil {
			t.Fatal("RequestKeyRotation without a stream succeeded")
		}
		st := n.open(t, time.Now)
		st.hello()

		if err := srv.RequestTokenRefresh(n.id); err != nil {
			t.Fatalf("RequestTokenRefresh: %v", err)
		}
		cmd, err := st.recv()
		if err != nil || cmd.GetRefreshToken() == nil {
			t.Fatalf("expected RefreshTokenCommand, got %v %v", cmd, err)
		}
		fresh, err := n.attest(t)
		if err != nil {
			t.Fatal(err)
		}
		n.token = fresh
		st.heartbeat()

		if err := srv.RequestKeyRotation(n.id, 24*time.Hour); err != nil {
			t.Fatalf("RequestKeyRotation: %v", err)
		}
		cmd, err = st.recv()
		if err != nil || cmd.GetRotateKey() == nil || cmd.GetRotateKey().GetKeepOld().AsDuration() != 24*time.Hour {
			t.Fatalf("expected RotateKeyCommand{keep_old 24h}, got %v %v", cmd, err)
		}
		r := n.newRotation(t, time.Now())
		resp, err := n.rotate(t, r, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		n.adopt(r, resp)
		st.heartbeat()

		_ = st.bs.CloseRequest()
		_, _ = st.recv()
		st.cancel()
		deadline := time.Now().Add(5 * time.Second)
		for srv.RequestTokenRefresh(n.id) == nil {
			if time.Now().After(deadline) {
				t.Fatal("RequestTokenRefresh still succeeds after the stream ended")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
