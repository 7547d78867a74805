package rpc_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/jackc/pgx/v5"
)

// An admin makes a tenant and an operator token for it; the operator works in that
// tenant only; revoking the token stops it at once; each step is audited with the
// admin's token id as the actor.
func TestAPITokensAndTenants(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		admin := srv.AdminClient()
		who, err := admin.WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		adminID := who.Msg.GetTokenId()

		tr, err := admin.CreateTenant(ctx, connect.NewRequest(&edgev1.CreateTenantRequest{Name: "alice", Kind: "personal"}))
		if err != nil {
			t.Fatal(err)
		}
		tenant := tr.Msg.GetTenant()
		if !strings.HasPrefix(tenant.GetId(), "u-") || tenant.GetKind() != store.TenantPersonal || tenant.GetName() != "alice" {
			t.Fatalf("personal tenant = %v, want u-... personal alice", tenant)
		}
		if _, err := admin.CreateTenant(ctx, connect.NewRequest(&edgev1.CreateTenantRequest{Name: "alice", Kind: "team"})); connect.CodeOf(err) != connect.CodeAlreadyExists {
			t.Fatalf("second tenant named alice: %v, want AlreadyExists", err)
		}
		for _, bad := range []*edgev1.CreateTenantRequest{{Name: "x", Kind: "family"}, {Name: "", Kind: "team"}, {Name: "a\nb", Kind: "team"}} {
			if _, err := admin.CreateTenant(ctx, connect.NewRequest(bad)); connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("CreateTenant(%v): %v, want InvalidArgument", bad, err)
			}
		}
		list, err := admin.ListTenants(ctx, connect.NewRequest(&edgev1.ListTenantsRequest{}))
		if err != nil || len(list.Msg.GetTenants()) != 2 {
			t.Fatalf("ListTenants = %v, %v; want default and alice", list.Msg.GetTenants(), err)
		}

		created, err := admin.CreateAPIToken(ctx, connect.NewRequest(&edgev1.CreateAPITokenRequest{TenantId: tenant.GetId(), Role: "operator", Name: "alice-laptop"}))
		if err != nil {
			t.Fatal(err)
		}
		tok := created.Msg.GetApiToken()
		if tok.GetTenantId() != tenant.GetId() || tok.GetRole() != "operator" || !strings.HasPrefix(created.Msg.GetToken(), tok.GetId()+".") {
			t.Fatalf("CreateAPIToken = %v", created.Msg)
		}
		if _, err := admin.CreateAPIToken(ctx, connect.NewRequest(&edgev1.CreateAPITokenRequest{Role: "root"})); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("role root: %v, want InvalidArgument", err)
		}
		if _, err := admin.CreateAPIToken(ctx, connect.NewRequest(&edgev1.CreateAPITokenRequest{TenantId: "t-nope", Role: "viewer"})); connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("unknown tenant: %v, want NotFound", err)
		}

		alice := srv.AdminClientWithToken(created.Msg.GetToken())
		me, err := alice.WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{}))
		if err != nil || me.Msg.GetTenant().GetId() != tenant.GetId() || me.Msg.GetTenant().GetKind() != "personal" {
			t.Fatalf("WhoAmI as alice = %v, %v", me.Msg, err)
		}
		mine, err := alice.ListAPITokens(ctx, connect.NewRequest(&edgev1.ListAPITokensRequest{}))
		if err != nil || len(mine.Msg.GetApiTokens()) != 1 || mine.Msg.GetApiTokens()[0].GetId() != tok.GetId() {
			t.Fatalf("alice's ListAPITokens = %v, %v; want only her own", mine.Msg.GetApiTokens(), err)
		}
		if _, err := alice.CreateEnrollmentToken(ctx, connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{})); err != nil {
			t.Fatalf("alice cannot create an enrollment token in her tenant: %v", err)
		}

		// The bootstrap token is the only admin: it cannot be revoked.
		if _, err := admin.RevokeAPIToken(ctx, connect.NewRequest(&edgev1.RevokeAPITokenRequest{Id: adminID})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Fatalf("revoking the last admin token: %v, want FailedPrecondition", err)
		}
		rv, err := admin.RevokeAPIToken(ctx, connect.NewRequest(&edgev1.RevokeAPITokenRequest{Id: tok.GetId()}))
		if err != nil || rv.Msg.GetApiToken().GetRevokedAt() == nil {
			t.Fatalf("RevokeAPIToken = %v, %v", rv.Msg, err)
		}
		if _, err := admin.RevokeAPIToken(ctx, connect.NewRequest(&edgev1.RevokeAPITokenRequest{Id: tok.GetId()})); err != nil {
			t.Fatalf("revoking again: %v, want ok (idempotent)", err)
		}
		if _, err := alice.WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("revoked token: %v, want Unauthenticated", err)
		}
		if _, err := admin.RevokeAPIToken(ctx, connect.NewRequest(&edgev1.RevokeAPITokenRequest{Id: "0123456789abcdef"})); connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("unknown token: %v, want NotFound", err)
		}

		entries, err := admin.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, e := range entries.Msg.GetEntries() {
			if e.GetActor() == "op:"+adminID {
				actions = append(actions, e.GetAction())
			}
		}
		if got, want := strings.Join(actions, ","), "tenant.create,api_token.create,api_token.revoke"; got != want {
			t.Fatalf("admin's audited actions = %s, want %s (the second revoke changed nothing)", got, want)
		}
		for _, e := range entries.Msg.GetEntries() {
			for _, v := range e.GetDetails() {
				if strings.Contains(created.Msg.GetToken(), v) && len(v) > 16 {
					t.Fatalf("audit entry %d holds the token's secret", e.GetId())
				}
			}
		}
	})
}

// Paging, the node filter and verification over RPC; an entry edited with SQL is
// named by VerifyAudit.
func TestAuditListAndVerify(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		admin := srv.AdminClient()
		h1 := enroll(t, srv, srv.EnrollmentToken(t))
		enroll(t, srv, srv.EnrollmentToken(t))

		all, err := admin.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		es := all.Msg.GetEntries()
		if len(es) < 4 {
			t.Fatalf("%d audit entries after two token creations and two enrollments", len(es))
		}
		for i, e := range es[1:] {
			if e.GetPrevHash() != es[i].GetHash() {
				t.Fatalf("entry %d does not link to entry %d", e.GetId(), es[i].GetId())
			}
		}
		page, err := admin.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{AfterId: es[0].GetId(), Limit: 1}))
		if err != nil || len(page.Msg.GetEntries()) != 1 || page.Msg.GetEntries()[0].GetId() != es[1].GetId() {
			t.Fatalf("after %d limit 1 = %v, %v", es[0].GetId(), page.Msg.GetEntries(), err)
		}
		node, err := admin.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{NodeId: h1.id}))
		if err != nil || len(node.Msg.GetEntries()) != 1 || node.Msg.GetEntries()[0].GetAction() != "enroll" {
			t.Fatalf("node %s's entries = %v, %v; want its enrollment", h1.id, node.Msg.GetEntries(), err)
		}
		if _, err := admin.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{Limit: -1})); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("negative limit: %v, want InvalidArgument", err)
		}

		v, err := admin.VerifyAudit(ctx, connect.NewRequest(&edgev1.VerifyAuditRequest{}))
		if err != nil || !v.Msg.GetOk() || v.Msg.GetEntriesChecked() != int64(len(es)) {
			t.Fatalf("VerifyAudit = %v, %v; want ok over %d entries", v.Msg, err, len(es))
		}

		bad := es[2].GetId()
		tamper(t, srv, opts, `UPDATE audit_log SET actor = 'system' WHERE id = `+strconv.FormatInt(bad, 10))
		v, err = admin.VerifyAudit(ctx, connect.NewRequest(&edgev1.VerifyAuditRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if v.Msg.GetOk() || v.Msg.GetFirstBadId() != bad || v.Msg.GetEntriesChecked() != int64(2) || !strings.Contains(v.Msg.GetProblem(), "edited") {
			t.Fatalf("VerifyAudit after editing entry %d = %v", bad, v.Msg)
		}
	})
}

// tamper runs SQL on the control plane's database on a connection of its own.
func tamper(t *testing.T, srv *cptest.Server, opts cptest.Options, query string) {
	t.Helper()
	if opts.DatabaseURL != "" {
		conn, err := pgx.Connect(t.Context(), opts.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(t.Context(), query); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(srv.DataDir, "aegis.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}
