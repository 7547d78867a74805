package rpc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Rotation policies over a real server: set, replace, list, delete; each change
// audited and pushed to the connected daemon it selects (and given in the next
// Welcome); bad input refused with a clear reason and nothing changed; hosts show
// key age, due time and overdue against the injected clock.
func TestRotationPolicies(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		admin := srv.AdminClient()
		prod := enroll(t, srv, srv.EnrollmentToken(t, "prod"))
		other := enroll(t, srv, srv.EnrollmentToken(t, "dev"))

		st := prod.open(t, clock.Now)
		if w := st.hello(); w.GetMaxKeyAge() != nil {
			t.Fatalf("Welcome before any policy carries max_key_age %v", w.GetMaxKeyAge().AsDuration())
		}
		otherSt := other.open(t, clock.Now)
		otherSt.hello()

		set := func(name, target string, max time.Duration) (*edgev1.SetRotationPolicyResponse, error) {
			resp, err := admin.SetRotationPolicy(ctx, connect.NewRequest(&edgev1.SetRotationPolicyRequest{Name: name, Target: target, MaxKeyAge: durationpb.New(max)}))
			if err != nil {
				return nil, err
			}
			return resp.Msg, nil
		}
		pushed := func(s *stream) *edgev1.RotationPolicyCommand {
			t.Helper()
			cmd, err := s.recv()
			if err != nil || cmd.GetRotationPolicy() == nil {
				t.Fatalf("expected a RotationPolicyCommand, got %v, %v", cmd, err)
			}
			return cmd.GetRotationPolicy()
		}

		resp, err := set("prod", " tags = AnyOf(prod) ", 90*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetReplaced() || len(resp.GetWarnings()) != 0 || resp.GetPolicy().GetTarget() != "tags=AnyOf(prod)" || resp.GetPolicy().GetHostsSelected() != 1 {
			t.Errorf("first set: %v", resp)
		}
		if got := pushed(st).GetMaxKeyAge().AsDuration(); got != 90*24*time.Hour {
			t.Errorf("pushed max %v, want 90d", got)
		}

		resp, err = set("prod", "tags=AnyOf(prod)", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !resp.GetReplaced() || len(resp.GetWarnings()) != 1 || !strings.Contains(resp.GetWarnings()[0], "below 1h") {
			t.Errorf("replacing with 30s: replaced %v, warnings %q", resp.GetReplaced(), resp.GetWarnings())
		}
		if got := pushed(st).GetMaxKeyAge().AsDuration(); got != 30*time.Second {
			t.Errorf("pushed max %v, want 30s", got)
		}
		// A second, larger policy selecting everyone: the smallest still wins for prod,
		// so only the dev host is told (the next command prod sees is the delete's).
		if _, err := set("everyone", "all", 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		if got := pushed(otherSt).GetMaxKeyAge().AsDuration(); got != 24*time.Hour {
			t.Errorf("dev host: pushed %v, want 24h", got)
		}

		// Bad input: the reason says what is wrong; nothing changes.
		for _, bad := range []struct {
			req  *edgev1.SetRotationPolicyRequest
			want string
		}{
			{&edgev1.SetRotationPolicyRequest{Name: "x", Target: "tags=Any(prod)", MaxKeyAge: durationpb.New(time.Hour)}, "at column 6"},
			{&edgev1.SetRotationPolicyRequest{Name: "x", Target: "", MaxKeyAge: durationpb.New(time.Hour)}, "a target is required"},
			{&edgev1.SetRotationPolicyRequest{Name: "x", Target: "all", MaxKeyAge: durationpb.New(5 * time.Second)}, "below the minimum 10s"},
			{&edgev1.SetRotationPolicyRequest{Name: "x", Target: "all"}, "max_key_age is required"},
			{&edgev1.SetRotationPolicyRequest{Name: "bad name", Target: "all", MaxKeyAge: durationpb.New(time.Hour)}, "policy name"},
			{&edgev1.SetRotationPolicyRequest{Name: "x", Target: "key_age>1d", MaxKeyAge: durationpb.New(time.Hour)}, "cannot select by key_age"},
		} {
			_, err := admin.SetRotationPolicy(ctx, connect.NewRequest(bad.req))
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("set %v: %v, want InvalidArgument %q", bad.req, err, bad.want)
			}
		}
		list, err := admin.ListRotationPolicies(ctx, connect.NewRequest(&edgev1.ListRotationPoliciesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if ps := list.Msg.GetPolicies(); len(ps) != 2 || ps[0].GetName() != "everyone" || ps[1].GetName() != "prod" || ps[1].GetMaxKeyAge().AsDuration() != 30*time.Second {
			t.Fatalf("policies after refused sets: %v", ps)
		}

		// Key age against the clock: due 30s after enrollment, overdue after.
		host := func(id string) *edgev1.Host {
			t.Helper()
			h, err := admin.GetHost(ctx, connect.NewRequest(&edgev1.GetHostRequest{NodeId: id}))
			if err != nil {
				t.Fatal(err)
			}
			return h.Msg.GetHost()
		}
		h := host(prod.id)
		if h.GetOverdue() || !h.GetKeyDueAt().AsTime().Equal(h.GetEnrolledAt().AsTime().Add(30*time.Second)) {
			t.Errorf("prod host: due %v (enrolled %v), overdue %v", h.GetKeyDueAt().AsTime(), h.GetEnrolledAt().AsTime(), h.GetOverdue())
		}
		clock.Advance(31 * time.Second)
		if h := host(prod.id); !h.GetOverdue() || h.GetKeyAge().AsDuration() < 31*time.Second {
			t.Errorf("after 31s: overdue %v, key age %v", h.GetOverdue(), h.GetKeyAge().AsDuration())
		}
		if h := host(other.id); h.GetOverdue() {
			t.Error("the dev host (24h) is overdue after 31s")
		}
		// The metrics say so too, fleet-wide.
		body := scrape(t, srv)
		for _, want := range []string{"aegis_edge_hosts_key_overdue 1", "aegis_edge_host_key_age_days_count 2", `aegis_edge_host_key_age_days_bucket{le="1"} 2`} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
		hl, err := admin.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{Target: "key_age>30s"}))
		if err != nil {
			t.Fatal(err)
		}
		if len(hl.Msg.GetHosts()) != 2 {
			t.Errorf("key_age>30s selects %d hosts, want both", len(hl.Msg.GetHosts()))
		}

		// A new stream learns the policy in its Welcome.
		st2 := prod.open(t, clock.Now)
		if got := st2.hello().GetMaxKeyAge().AsDuration(); got != 30*time.Second {
			t.Errorf("Welcome max_key_age %v, want 30s", got)
		}

		if _, err := admin.DeleteRotationPolicy(ctx, connect.NewRequest(&edgev1.DeleteRotationPolicyRequest{Name: "prod"})); err != nil {
			t.Fatal(err)
		}
		if got := pushed(st2).GetMaxKeyAge().AsDuration(); got != 24*time.Hour {
			t.Errorf("after deleting prod's policy, pushed %v, want 24h (everyone)", got)
		}
		_, err = admin.DeleteRotationPolicy(ctx, connect.NewRequest(&edgev1.DeleteRotationPolicyRequest{Name: "prod"}))
		if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), "keys policy list") {
			t.Errorf("second delete: %v, want NotFound naming the list command", err)
		}

		audit, err := admin.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{Limit: 1000}))
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, e := range audit.Msg.GetEntries() {
			if strings.HasPrefix(e.GetAction(), "rotation_policy") {
				actions = append(actions, e.GetAction()+":"+e.GetDetails()["policy"]+":"+e.GetDetails()["max_key_age"])
			}
		}
		want := "rotation_policy_set:prod:90d rotation_policy_set:prod:30s rotation_policy_set:everyone:1d rotation_policy_delete:prod:30s"
		if got := strings.Join(actions, " "); got != want {
			t.Errorf("audit: %s\nwant    %s", got, want)
		}
	})
}

// A policy set through one replica reaches a daemon whose stream is on the other.
func TestReplicasPolicyReachesOtherReplica(t *testing.T) {
	a, b, _ := replicas(t)
	_, st := onReplica(t, a, b)
	if _, err := a.AdminClient().SetRotationPolicy(context.Background(), connect.NewRequest(&edgev1.SetRotationPolicyRequest{
		Name: "everyone", Target: "all", MaxKeyAge: durationpb.New(7 * 24 * time.Hour),
	})); err != nil {
		t.Fatal(err)
	}
	for {
		cmd, err := st.recv()
		if err != nil {
			t.Fatalf("waiting for the policy on replica B: %v", err)
		}
		if rp := cmd.GetRotationPolicy(); rp != nil {
			if got := rp.GetMaxKeyAge().AsDuration(); got != 7*24*time.Hour {
				t.Fatalf("pushed %v, want 7d", got)
			}
			return
		}
	}
}
