package rpc_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/rpc"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"google.golang.org/protobuf/types/known/durationpb"
)

// mintToken stores an API token of role in tenant and returns its text.
func mintToken(t *testing.T, srv *cptest.Server, tenantID, role string) string {
	t.Helper()
	text, rec, err := apitoken.Mint(rand.Reader, tenantID, role, role+"-test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Store.CreateAPIToken(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return text
}

func code(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

// Every admin RPC, for every role, on an object of the caller's own tenant and of
// another: what is allowed works, a role too low is PermissionDenied, and another
// tenant's object is NotFound (never Forbidden, so existence does not leak).
func TestAdminRolesAndTenants(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()

		// Tenant A is the bootstrap tenant; tenant B is another team.
		who, err := srv.AdminClient().WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		tenantA := who.Msg.GetTenant().GetId()
		if err := srv.Store.CreateTenant(ctx, store.Tenant{ID: "t-bbbbbbbb", Name: "b", Kind: store.TenantTeam}); err != nil {
			t.Fatal(err)
		}
		hostA := enroll(t, srv, srv.EnrollmentToken(t, "a"))
		created, err := srv.AdminClient().CreateEnrollmentToken(ctx, connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		tokenA := created.Msg.GetEnrollmentToken().GetId()

		clients := map[string]edgev1connect.EdgeAdminServiceClient{
			"admin":      srv.AdminClient(),
			"operator A": srv.AdminClientWithToken(mintToken(t, srv, tenantA, store.RoleOperator)),
			"viewer A":   srv.AdminClientWithToken(mintToken(t, srv, tenantA, store.RoleViewer)),
			"operator B": srv.AdminClientWithToken(mintToken(t, srv, "t-bbbbbbbb", store.RoleOperator)),
			"viewer B":   srv.AdminClientWithToken(mintToken(t, srv, "t-bbbbbbbb", store.RoleViewer)),
		}

		viewerA := mintToken(t, srv, tenantA, store.RoleViewer)
		viewerAID, _, _ := apitoken.Parse(viewerA)
		tenantsMade := 0

		type call func(c edgev1connect.EdgeAdminServiceClient) error
		calls := map[string]call{
			edgev1connect.EdgeAdminServiceWhoAmIProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				_, err := c.WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{}))
				return err
			},
			edgev1connect.EdgeAdminServiceListHostsProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				resp, err := c.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{}))
				if err != nil {
					return err
				}
				for _, h := range resp.Msg.GetHosts() {
					if h.GetNodeId() == hostA.id {
						return nil
					}
				}
				return connect.NewError(connect.CodeNotFound, errors.New("host A not listed"))
			},
			edgev1connect.EdgeAdminServiceGetHostProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				_, err := c.GetHost(ctx, connect.NewRequest(&edgev1.GetHostRequest{NodeId: hostA.id}))
				return err
			},
			edgev1connect.EdgeAdminServiceListEnrollmentTokensProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				resp, err := c.ListEnrollmentTokens(ctx, connect.NewRequest(&edgev1.ListEnrollmentTokensRequest{}))
				if err != nil {
					return err
				}
				for _, e := range resp.Msg.GetEnrollmentTokens() {
					if e.GetId() == tokenA {
						return nil
					}
				}
				return connect.NewError(connect.CodeNotFound, errors.New("token A not listed"))
			},
			edgev1connect.EdgeAdminServiceCreateEnrollmentTokenProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				_, err := c.CreateEnrollmentToken(ctx, connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Minute)}))
				return err
			},
			edgev1connect.EdgeAdminServiceRevokeEnrollmentTokenProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				// Revoking is idempotent, so every allowed caller may revoke token A.
				_, err := c.RevokeEnrollmentToken(ctx, connect.NewRequest(&edgev1.RevokeEnrollmentTokenRequest{Id: tokenA}))
				return err
			},
			edgev1connect.EdgeAdminServiceRevokeHostProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				// Revoking a host is idempotent too; the other rows still read a
				// revoked host fine.
				_, err := c.RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: hostA.id}))
				return err
			},
			edgev1connect.EdgeAdminServiceSetHostSecurityContextProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				_, err := c.SetHostSecurityContext(ctx, connect.NewRequest(&edgev1.SetHostSecurityContextRequest{NodeId: hostA.id, SecurityContext: "ops", RefreshNow: true}))
				return err
			},
			edgev1connect.EdgeAdminServiceExecProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				// Host A has no stream: an allowed caller gets a result
				// (EDGE_DISCONNECTED), not an error.
				s, err := c.Exec(ctx, connect.NewRequest(&edgev1.ExecRequest{NodeId: hostA.id, Command: "/bin/true"}))
				if err != nil {
					return err
				}
				defer s.Close()
				var result *edgev1.CommandResult
				for s.Receive() {
					if r := s.Msg().GetResult(); r != nil {
						result = r
					}
				}
				if err := s.Err(); err != nil {
					return err
				}
				if result.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED {
					return connect.NewError(connect.CodeInternal, errors.New("no EDGE_DISCONNECTED result"))
				}
				return nil
			},
			edgev1connect.EdgeAdminServiceAttachExecProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				// Host A has no stream: an allowed caller is told so as a result; host
				// A is another tenant's for operator B (NotFound, nothing learned).
				s, err := c.AttachExec(ctx, connect.NewRequest(&edgev1.AttachExecRequest{NodeId: hostA.id, CommandId: "c-" + strings.Repeat("ab", 16)}))
				if err != nil {
					return err
				}
				defer s.Close()
				var result *edgev1.CommandResult
				for s.Receive() {
					if r := s.Msg().GetResult(); r != nil {
						result = r
					}
				}
				if err := s.Err(); err != nil {
					return err
				}
				if result.GetErrorKind() != edgev1.ToolErrorKind_TOOL_ERROR_KIND_EDGE_DISCONNECTED {
					return connect.NewError(connect.CodeInternal, errors.New("no EDGE_DISCONNECTED result"))
				}
				return nil
			},
			edgev1connect.EdgeAdminServiceListAPITokensProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				resp, err := c.ListAPITokens(ctx, connect.NewRequest(&edgev1.ListAPITokensRequest{}))
				if err != nil {
					return err
				}
				for _, tok := range resp.Msg.GetApiTokens() {
					if tok.GetId() == viewerAID {
						return nil
					}
				}
				return connect.NewError(connect.CodeNotFound, errors.New("viewer A's token not listed"))
			},
			edgev1connect.EdgeAdminServiceCreateAPITokenProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				_, err := c.CreateAPIToken(ctx, connect.NewRequest(&edgev1.CreateAPITokenRequest{TenantId: tenantA, Role: store.RoleViewer}))
				return err
			},
			edgev1connect.EdgeAdminServiceRevokeAPITokenProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				// Idempotent, like the other revokes.
				_, err := c.RevokeAPIToken(ctx, connect.NewRequest(&edgev1.RevokeAPITokenRequest{Id: viewerAID}))
				return err
			},
			edgev1connect.EdgeAdminServiceCreateTenantProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				tenantsMade++
				_, err := c.CreateTenant(ctx, connect.NewRequest(&edgev1.CreateTenantRequest{Name: fmt.Sprintf("team-%d", tenantsMade), Kind: store.TenantTeam}))
				return err
			},
			edgev1connect.EdgeAdminServiceListTenantsProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				_, err := c.ListTenants(ctx, connect.NewRequest(&edgev1.ListTenantsRequest{}))
				return err
			},
			edgev1connect.EdgeAdminServiceListAuditProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				resp, err := c.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{NodeId: hostA.id, Limit: 1000}))
				if err != nil {
					return err
				}
				for _, e := range resp.Msg.GetEntries() {
					if e.GetAction() == "enroll" {
						return nil
					}
				}
				return connect.NewError(connect.CodeNotFound, errors.New("host A's enrollment not in the audit list"))
			},
			edgev1connect.EdgeAdminServiceVerifyAuditProcedure: func(c edgev1connect.EdgeAdminServiceClient) error {
				resp, err := c.VerifyAudit(ctx, connect.NewRequest(&edgev1.VerifyAuditRequest{}))
				if err == nil && !resp.Msg.GetOk() {
					return connect.NewError(connect.CodeDataLoss, fmt.Errorf("audit chain broken at %d: %s", resp.Msg.GetFirstBadId(), resp.Msg.GetProblem()))
				}
				return err
			},
		}
		// A run of tenant A; tenant B can neither see it nor resolve A's host.
		runA := startRun(t, srv.AdminClient(), rotateSpec("nodes="+hostA.id)).GetRun().GetId()
		onlyA := func(err error) error {
			// B's resolution is tenant-scoped: A's host does not exist for it.
			if connect.CodeOf(err) == connect.CodeInvalidArgument && strings.Contains(err.Error(), "selects no hosts") {
				return connect.NewError(connect.CodeNotFound, err)
			}
			return err
		}
		calls[edgev1connect.EdgeAdminServiceUpdateHostTagsProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			_, err := c.UpdateHostTags(ctx, connect.NewRequest(&edgev1.UpdateHostTagsRequest{NodeId: hostA.id, Add: []string{"tagged"}}))
			return err
		}
		calls[edgev1connect.EdgeAdminServicePlanFleetRunProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			_, err := c.PlanFleetRun(ctx, connect.NewRequest(&edgev1.PlanFleetRunRequest{Spec: rotateSpec("nodes=" + hostA.id)}))
			return onlyA(err)
		}
		calls[edgev1connect.EdgeAdminServiceStartFleetRunProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			_, err := c.StartFleetRun(ctx, connect.NewRequest(&edgev1.StartFleetRunRequest{Spec: rotateSpec("nodes=" + hostA.id)}))
			return onlyA(err)
		}
		calls[edgev1connect.EdgeAdminServiceWatchFleetRunProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			s, err := c.WatchFleetRun(ctx, connect.NewRequest(&edgev1.WatchFleetRunRequest{RunId: runA}))
			if err != nil {
				return err
			}
			defer s.Close()
			for s.Receive() {
			}
			return s.Err()
		}
		calls[edgev1connect.EdgeAdminServiceCancelFleetRunProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			_, err := c.CancelFleetRun(ctx, connect.NewRequest(&edgev1.CancelFleetRunRequest{RunId: runA}))
			return err
		}
		calls[edgev1connect.EdgeAdminServiceListFleetRunsProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			resp, err := c.ListFleetRuns(ctx, connect.NewRequest(&edgev1.ListFleetRunsRequest{}))
			if err != nil {
				return err
			}
			for _, r := range resp.Msg.GetRuns() {
				if r.GetId() == runA {
					return nil
				}
			}
			return connect.NewError(connect.CodeNotFound, errors.New("run A not listed"))
		}
		calls[edgev1connect.EdgeAdminServiceGetFleetRunProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			_, err := c.GetFleetRun(ctx, connect.NewRequest(&edgev1.GetFleetRunRequest{RunId: runA}))
			return err
		}

		calls[edgev1connect.EdgeAdminServiceDeleteHostProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			// A fresh revoked host of tenant A per call: deleting is not idempotent.
			h := enrollNamed(t, srv, "to-delete")
			if _, err := srv.AdminClient().RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: h.id})); err != nil {
				t.Fatal(err)
			}
			_, err := c.DeleteHost(ctx, connect.NewRequest(&edgev1.DeleteHostRequest{NodeId: h.id}))
			return err
		}
		setPolicy := func(c edgev1connect.EdgeAdminServiceClient, name string) error {
			_, err := c.SetRotationPolicy(ctx, connect.NewRequest(&edgev1.SetRotationPolicyRequest{Name: name, Target: "tags=AnyOf(nothing-has-this)", MaxKeyAge: durationpb.New(90 * 24 * time.Hour)}))
			return err
		}
		if err := setPolicy(srv.AdminClient(), "policy-a"); err != nil {
			t.Fatal(err)
		}
		calls[edgev1connect.EdgeAdminServiceSetRotationPolicyProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			return setPolicy(c, "set-by-caller")
		}
		calls[edgev1connect.EdgeAdminServiceListRotationPoliciesProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			resp, err := c.ListRotationPolicies(ctx, connect.NewRequest(&edgev1.ListRotationPoliciesRequest{}))
			if err != nil {
				return err
			}
			for _, p := range resp.Msg.GetPolicies() {
				if p.GetName() == "policy-a" && p.GetTenantId() == tenantA {
					return nil
				}
			}
			return connect.NewError(connect.CodeNotFound, errors.New("policy A not listed"))
		}
		calls[edgev1connect.EdgeAdminServiceDeleteRotationPolicyProcedure] = func(c edgev1connect.EdgeAdminServiceClient) error {
			// Tenant A's policy, made afresh for each caller.
			if err := setPolicy(srv.AdminClient(), "to-delete"); err != nil {
				t.Fatal(err)
			}
			_, err := c.DeleteRotationPolicy(ctx, connect.NewRequest(&edgev1.DeleteRotationPolicyRequest{Name: "to-delete"}))
			return err
		}
		for proc := range rpc.AdminPermissions {
			if calls[proc] == nil {
				t.Errorf("%s has a permission but no row in this test", proc)
			}
		}

		// want[procedure][client]: 0 = ok. WhoAmI and CreateEnrollmentToken act on the
		// caller's own tenant, so tenant B sees them succeed.
		ok, denied, notFound := connect.Code(0), connect.CodePermissionDenied, connect.CodeNotFound
		want := map[string]map[string]connect.Code{
			edgev1connect.EdgeAdminServiceWhoAmIProcedure:                 {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": ok, "viewer B": ok},
			edgev1connect.EdgeAdminServiceListHostsProcedure:              {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceGetHostProcedure:                {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceListEnrollmentTokensProcedure:   {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceCreateEnrollmentTokenProcedure:  {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": ok, "viewer B": denied},
			edgev1connect.EdgeAdminServiceRevokeEnrollmentTokenProcedure:  {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			edgev1connect.EdgeAdminServiceRevokeHostProcedure:             {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			edgev1connect.EdgeAdminServiceSetHostSecurityContextProcedure: {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			edgev1connect.EdgeAdminServiceExecProcedure:                   {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			edgev1connect.EdgeAdminServiceAttachExecProcedure:             {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			// API tokens are listed in the caller's tenant (admins: every tenant);
			// minting, revoking and tenants are for admins only.
			edgev1connect.EdgeAdminServiceListAPITokensProcedure:  {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceCreateAPITokenProcedure: {"admin": ok, "operator A": denied, "viewer A": denied, "operator B": denied, "viewer B": denied},
			edgev1connect.EdgeAdminServiceRevokeAPITokenProcedure: {"admin": ok, "operator A": denied, "viewer A": denied, "operator B": denied, "viewer B": denied},
			edgev1connect.EdgeAdminServiceCreateTenantProcedure:   {"admin": ok, "operator A": denied, "viewer A": denied, "operator B": denied, "viewer B": denied},
			edgev1connect.EdgeAdminServiceListTenantsProcedure:    {"admin": ok, "operator A": denied, "viewer A": denied, "operator B": denied, "viewer B": denied},
			edgev1connect.EdgeAdminServiceListAuditProcedure:      {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceVerifyAuditProcedure:    {"admin": ok, "operator A": denied, "viewer A": denied, "operator B": denied, "viewer B": denied},
			// Fleet runs: reading (plans are reads) for viewers, acting for operators;
			// another tenant's run or host is NotFound.
			edgev1connect.EdgeAdminServiceUpdateHostTagsProcedure: {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			edgev1connect.EdgeAdminServicePlanFleetRunProcedure:   {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceStartFleetRunProcedure:  {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			edgev1connect.EdgeAdminServiceWatchFleetRunProcedure:  {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceCancelFleetRunProcedure: {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			edgev1connect.EdgeAdminServiceListFleetRunsProcedure:  {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceGetFleetRunProcedure:    {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceDeleteHostProcedure:     {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
			// A policy is made in the caller's own tenant; another tenant's is NotFound.
			edgev1connect.EdgeAdminServiceSetRotationPolicyProcedure:    {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": ok, "viewer B": denied},
			edgev1connect.EdgeAdminServiceListRotationPoliciesProcedure: {"admin": ok, "operator A": ok, "viewer A": ok, "operator B": notFound, "viewer B": notFound},
			edgev1connect.EdgeAdminServiceDeleteRotationPolicyProcedure: {"admin": ok, "operator A": ok, "viewer A": denied, "operator B": notFound, "viewer B": denied},
		}
		for proc, byClient := range want {
			for name, wantCode := range byClient {
				if got := code(calls[proc](clients[name])); got != wantCode {
					t.Errorf("%s as %s: code %v, want %v", proc, name, got, wantCode)
				}
			}
		}

		// A token of tenant B never revoked tenant A's token by accident.
		list, err := srv.Store.ListEnrollmentTokens(ctx, "t-bbbbbbbb")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if e.ID == tokenA {
				t.Fatal("tenant B sees tenant A's enrollment token in the store")
			}
		}

		// A revoked API token and a garbage one are Unauthenticated on every RPC.
		text := mintToken(t, srv, tenantA, store.RoleOperator)
		id, _, _ := apitoken.Parse(text)
		if err := srv.Store.RevokeAPIToken(ctx, id, time.Now()); err != nil {
			t.Fatal(err)
		}
		for name, c := range map[string]edgev1connect.EdgeAdminServiceClient{
			"revoked": srv.AdminClientWithToken(text), "garbage": srv.AdminClientWithToken("x.y"), "none": srv.AdminClientWithToken(""),
		} {
			for proc, fn := range calls {
				if got := code(fn(c)); got != connect.CodeUnauthenticated {
					t.Errorf("%s as %s token: code %v, want Unauthenticated", proc, name, got)
				}
			}
		}
	})
}
