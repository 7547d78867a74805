package rpc_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

// DeleteHost takes only a revoked host off the list: a Connected host and an enrolled
// but Disconnected one are refused (FailedPrecondition) and stay; a deleted host is
// audited, gone from every listing, and its key can never enroll again.
func TestDeleteHost(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		c := srv.AdminClient()

		live := startDaemon(t, srv, "live", obey)
		idle := enrollNamed(t, srv, "idle")

		for id, want := range map[string]string{live.nodeID(): "is Connected", idle.id: "is Disconnected but still enrolled"} {
			_, err := c.DeleteHost(ctx, connect.NewRequest(&edgev1.DeleteHostRequest{NodeId: id}))
			if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "revoke it first") {
				t.Fatalf("delete %s: %v, want FailedPrecondition %q", id, err, want)
			}
			if _, err := c.GetHost(ctx, connect.NewRequest(&edgev1.GetHostRequest{NodeId: id})); err != nil {
				t.Fatalf("a refused delete removed %s: %v", id, err)
			}
		}

		if _, err := c.RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: idle.id})); err != nil {
			t.Fatal(err)
		}
		resp, err := c.DeleteHost(ctx, connect.NewRequest(&edgev1.DeleteHostRequest{NodeId: idle.id}))
		if err != nil {
			t.Fatal(err)
		}
		if h := resp.Msg.GetHost(); h.GetNodeId() != idle.id || h.GetStatus() != edgev1.HostStatus_HOST_STATUS_REVOKED {
			t.Fatalf("deleted host reported as %v", h)
		}
		if _, err := c.GetHost(ctx, connect.NewRequest(&edgev1.GetHostRequest{NodeId: idle.id})); connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("get after delete: %v", err)
		}
		list, err := c.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{Target: "all"}))
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range list.Msg.GetHosts() {
			if h.GetNodeId() == idle.id {
				t.Fatal("deleted host still listed")
			}
		}
		if _, err := c.DeleteHost(ctx, connect.NewRequest(&edgev1.DeleteHostRequest{NodeId: idle.id})); connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("second delete: %v, want NotFound", err)
		}

		// Audited, with who did it.
		audit, err := c.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{Limit: 1000}))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range audit.Msg.GetEntries() {
			if e.GetAction() == "delete_host" && e.GetNodeId() == idle.id && strings.HasPrefix(e.GetActor(), "op:") {
				found = true
			}
		}
		if !found {
			t.Fatal("no delete_host audit entry")
		}

		// The key stays claimed: the deleted host cannot come back with it.
		reuse := enrollRequest(t, srv.ClusterClient(), srv.EnrollmentToken(t), idle.pub, idle.key)
		if _, err := srv.ClusterClient().Enroll(ctx, connect.NewRequest(reuse)); err == nil {
			t.Fatal("a deleted host's key enrolled again")
		}
	})
}
