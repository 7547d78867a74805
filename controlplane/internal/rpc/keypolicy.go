package rpc

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"google.golang.org/protobuf/types/known/durationpb"
)

func policyPB(p keypolicy.Policy) *edgev1.RotationPolicy {
	return &edgev1.RotationPolicy{
		Name:          p.Name,
		TenantId:      p.TenantID,
		Target:        p.Target,
		MaxKeyAge:     durationpb.New(p.MaxKeyAge),
		CreatedAt:     ts(p.CreatedAt),
		UpdatedAt:     ts(p.UpdatedAt),
		UpdatedBy:     p.UpdatedBy,
		HostsSelected: int32(p.HostsSelected),
	}
}

func (a *Admin) keyPolicy() (*keypolicy.Service, error) {
	if a.cfg.KeyPolicy == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("rotation policies are not enabled on this control plane"))
	}
	return a.cfg.KeyPolicy, nil
}

// SetRotationPolicy implements EdgeAdminService.SetRotationPolicy.
func (a *Admin) SetRotationPolicy(ctx context.Context, req *connect.Request[edgev1.SetRotationPolicyRequest]) (*connect.Response[edgev1.SetRotationPolicyResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	svc, err := a.keyPolicy()
	if err != nil {
		return nil, err
	}
	if req.Msg.GetMaxKeyAge() == nil {
		return nil, a.fail(ctx, "SetRotationPolicy", fmt.Errorf("%w: max_key_age is required (e.g. 90d)", keypolicy.ErrInvalid))
	}
	pol, replaced, warnings, err := svc.Set(ctx, p, req.Msg.GetName(), req.Msg.GetTarget(), req.Msg.GetMaxKeyAge().AsDuration())
	if err != nil {
		return nil, a.fail(ctx, "SetRotationPolicy", err)
	}
	a.cfg.Logger.InfoContext(ctx, "rotation policy set", "operator", p.TokenID, "policy", pol.Name, "target", pol.Target, "max_key_age", pol.MaxKeyAge, "replaced", replaced)
	return connect.NewResponse(&edgev1.SetRotationPolicyResponse{Policy: policyPB(pol), Replaced: replaced, Warnings: warnings}), nil
}

// ListRotationPolicies implements EdgeAdminService.ListRotationPolicies.
func (a *Admin) ListRotationPolicies(ctx context.Context, _ *connect.Request[edgev1.ListRotationPoliciesRequest]) (*connect.Response[edgev1.ListRotationPoliciesResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	svc, err := a.keyPolicy()
	if err != nil {
		return nil, err
	}
	ps, err := svc.List(ctx, p)
	if err != nil {
		return nil, a.fail(ctx, "ListRotationPolicies", err)
	}
	out := &edgev1.ListRotationPoliciesResponse{}
	for _, pol := range ps {
		out.Policies = append(out.Policies, policyPB(pol))
	}
	return connect.NewResponse(out), nil
}

// DeleteRotationPolicy implements EdgeAdminService.DeleteRotationPolicy.
func (a *Admin) DeleteRotationPolicy(ctx context.Context, req *connect.Request[edgev1.DeleteRotationPolicyRequest]) (*connect.Response[edgev1.DeleteRotationPolicyResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	svc, err := a.keyPolicy()
	if err != nil {
		return nil, err
	}
	pol, err := svc.Delete(ctx, p, req.Msg.GetName())
	if err != nil {
		return nil, a.fail(ctx, "DeleteRotationPolicy", err)
	}
	a.cfg.Logger.InfoContext(ctx, "rotation policy deleted", "operator", p.TokenID, "policy", pol.Name)
	return connect.NewResponse(&edgev1.DeleteRotationPolicyResponse{Policy: policyPB(pol)}), nil
}
