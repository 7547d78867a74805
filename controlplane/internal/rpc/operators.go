package rpc

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

var errOperatorsUnimplemented = connect.NewError(connect.CodeUnimplemented, errors.New("API tokens, tenants and the audit trail are not available on this control plane yet"))

// CreateAPIToken is not served yet.
func (a *Admin) CreateAPIToken(context.Context, *connect.Request[edgev1.CreateAPITokenRequest]) (*connect.Response[edgev1.CreateAPITokenResponse], error) {
	return nil, errOperatorsUnimplemented
}

// ListAPITokens is not served yet.
func (a *Admin) ListAPITokens(context.Context, *connect.Request[edgev1.ListAPITokensRequest]) (*connect.Response[edgev1.ListAPITokensResponse], error) {
	return nil, errOperatorsUnimplemented
}

// RevokeAPIToken is not served yet.
func (a *Admin) RevokeAPIToken(context.Context, *connect.Request[edgev1.RevokeAPITokenRequest]) (*connect.Response[edgev1.RevokeAPITokenResponse], error) {
	return nil, errOperatorsUnimplemented
}

// CreateTenant is not served yet.
func (a *Admin) CreateTenant(context.Context, *connect.Request[edgev1.CreateTenantRequest]) (*connect.Response[edgev1.CreateTenantResponse], error) {
	return nil, errOperatorsUnimplemented
}

// ListTenants is not served yet.
func (a *Admin) ListTenants(context.Context, *connect.Request[edgev1.ListTenantsRequest]) (*connect.Response[edgev1.ListTenantsResponse], error) {
	return nil, errOperatorsUnimplemented
}

// ListAudit is not served yet.
func (a *Admin) ListAudit(context.Context, *connect.Request[edgev1.ListAuditRequest]) (*connect.Response[edgev1.ListAuditResponse], error) {
	return nil, errOperatorsUnimplemented
}

// VerifyAudit is not served yet.
func (a *Admin) VerifyAudit(context.Context, *connect.Request[edgev1.VerifyAuditRequest]) (*connect.Response[edgev1.VerifyAuditResponse], error) {
	return nil, errOperatorsUnimplemented
}
