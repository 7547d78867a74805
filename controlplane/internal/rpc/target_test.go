package rpc_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// ListHosts --target uses the selector parser; resolution stays tenant-scoped (naming
// another tenant's node id selects nothing), and a malformed selector is
// InvalidArgument with the column, changing nothing.
func TestListHostsTarget(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		web := enroll(t, srv, srv.EnrollmentToken(t, "web", "prod"))
		db := enroll(t, srv, srv.EnrollmentToken(t, "db"))

		list := func(c interface {
			ListHosts(context.Context, *connect.Request[edgev1.ListHostsRequest]) (*connect.Response[edgev1.ListHostsResponse], error)
		}, target string) ([]string, error) {
			resp, err := c.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{Target: target}))
			if err != nil {
				return nil, err
			}
			var ids []string
			for _, h := range resp.Msg.GetHosts() {
				ids = append(ids, h.GetNodeId())
			}
			return ids, nil
		}
		for target, want := range map[string]string{
			"":                              web.id + " " + db.id,
			"all":                           web.id + " " + db.id,
			"tags=AnyOf(prod)":              web.id,
			"tags=NoneOf(prod)":             db.id,
			"nodes=" + db.id:                db.id,
			"tags=AnyOf(web,db);os=linux":   web.id + " " + db.id,
			"tags=AllOf(web,db)":            "",
			"nodes=" + web.id + ";os=other": "",
		} {
			got, err := list(srv.AdminClient(), target)
			if err != nil {
				t.Fatalf("ListHosts(%q): %v", target, err)
			}
			if strings.Join(got, " ") != want {
				t.Errorf("ListHosts(%q) = %v, want %s", target, got, want)
			}
		}

		_, err := list(srv.AdminClient(), "tags=AnyOf(prod")
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "column 16") {
			t.Errorf("malformed target: %v, want InvalidArgument naming column 16", err)
		}

		if err := srv.Store.CreateTenant(ctx, store.Tenant{ID: "t-cccccccc", Kind: store.TenantTeam}); err != nil {
			t.Fatal(err)
		}
		other := srv.AdminClientWithToken(mintToken(t, srv, "t-cccccccc", store.RoleOperator))
		got, err := list(other, "nodes="+web.id)
		if err != nil || len(got) != 0 {
			t.Errorf("another tenant's operator selecting %s by id got %v (err %v), want nothing", web.id, got, err)
		}
	})
}
