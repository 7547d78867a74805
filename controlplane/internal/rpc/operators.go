package rpc

import (
	"context"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/operators"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// CreateAPIToken implements EdgeAdminService.CreateAPIToken. The token's text is in
// the response only; the log names the token by id.
func (a *Admin) CreateAPIToken(ctx context.Context, req *connect.Request[edgev1.CreateAPITokenRequest]) (*connect.Response[edgev1.CreateAPITokenResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	text, rec, err := a.cfg.Operators.CreateToken(ctx, p, operators.CreateTokenRequest{
		TenantID: m.GetTenantId(), Role: m.GetRole(), Name: m.GetName(),
	})
	if err != nil {
		return nil, a.fail(ctx, "CreateAPIToken", err)
	}
	a.cfg.Logger.InfoContext(ctx, "api token created", "operator", p.TokenID, "api_token", rec.ID, "tenant", rec.TenantID, "role", rec.Role)
	return connect.NewResponse(&edgev1.CreateAPITokenResponse{Token: text, ApiToken: apiTokenPB(rec)}), nil
}

// ListAPITokens implements EdgeAdminService.ListAPITokens.
func (a *Admin) ListAPITokens(ctx context.Context, _ *connect.Request[edgev1.ListAPITokensRequest]) (*connect.Response[edgev1.ListAPITokensResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	list, err := a.cfg.Operators.ListTokens(ctx, p)
	if err != nil {
		return nil, a.fail(ctx, "ListAPITokens", err)
	}
	out := &edgev1.ListAPITokensResponse{}
	for _, t := range list {
		out.ApiTokens = append(out.ApiTokens, apiTokenPB(t))
	}
	return connect.NewResponse(out), nil
}

// RevokeAPIToken implements EdgeAdminService.RevokeAPIToken.
func (a *Admin) RevokeAPIToken(ctx context.Context, req *connect.Request[edgev1.RevokeAPITokenRequest]) (*connect.Response[edgev1.RevokeAPITokenResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	rec, err := a.cfg.Operators.RevokeToken(ctx, p, req.Msg.GetId())
	if err != nil {
		return nil, a.fail(ctx, "RevokeAPIToken", err)
	}
	a.cfg.Logger.InfoContext(ctx, "api token revoked", "operator", p.TokenID, "api_token", rec.ID, "tenant", rec.TenantID)
	return connect.NewResponse(&edgev1.RevokeAPITokenResponse{ApiToken: apiTokenPB(rec)}), nil
}

// CreateTenant implements EdgeAdminService.CreateTenant.
func (a *Admin) CreateTenant(ctx context.Context, req *connect.Request[edgev1.CreateTenantRequest]) (*connect.Response[edgev1.CreateTenantResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := a.cfg.Operators.CreateTenant(ctx, p, req.Msg.GetName(), req.Msg.GetKind())
	if err != nil {
		return nil, a.fail(ctx, "CreateTenant", err)
	}
	a.cfg.Logger.InfoContext(ctx, "tenant created", "operator", p.TokenID, "tenant", t.ID, "kind", t.Kind)
	return connect.NewResponse(&edgev1.CreateTenantResponse{Tenant: tenantPB(t)}), nil
}

// ListTenants implements EdgeAdminService.ListTenants.
func (a *Admin) ListTenants(ctx context.Context, _ *connect.Request[edgev1.ListTenantsRequest]) (*connect.Response[edgev1.ListTenantsResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	list, err := a.cfg.Operators.ListTenants(ctx, p)
	if err != nil {
		return nil, a.fail(ctx, "ListTenants", err)
	}
	out := &edgev1.ListTenantsResponse{}
	for _, t := range list {
		out.Tenants = append(out.Tenants, tenantPB(t))
	}
	return connect.NewResponse(out), nil
}

func apiTokenPB(t store.APIToken) *edgev1.APIToken {
	return &edgev1.APIToken{
		Id:        t.ID,
		TenantId:  t.TenantID,
		Role:      t.Role,
		Name:      t.Name,
		CreatedAt: ts(t.CreatedAt),
		RevokedAt: ts(t.RevokedAt),
	}
}
