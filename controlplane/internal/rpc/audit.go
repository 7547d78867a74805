package rpc

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/audit"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Audit page sizes.
const (
	defaultAuditLimit = 100
	maxAuditLimit     = 1000
)

// ListAudit implements EdgeAdminService.ListAudit: the caller's tenant's entries (an
// admin's: every tenant's), oldest first.
func (a *Admin) ListAudit(ctx context.Context, req *connect.Request[edgev1.ListAuditRequest]) (*connect.Response[edgev1.ListAuditResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	limit := int(m.GetLimit())
	switch {
	case limit < 0 || m.GetAfterId() < 0:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("after_id and limit must not be negative"))
	case limit == 0:
		limit = defaultAuditLimit
	case limit > maxAuditLimit:
		limit = maxAuditLimit
	}
	var list []store.AuditEntry
	if m.GetNodeId() != "" {
		list, err = a.cfg.Store.ListNodeAudit(ctx, p.Scope(), m.GetNodeId(), m.GetAfterId(), limit)
	} else {
		list, err = a.cfg.Store.ListAudit(ctx, p.Scope(), m.GetAfterId(), limit)
	}
	if err != nil {
		return nil, a.fail(ctx, "ListAudit", err)
	}
	out := &edgev1.ListAuditResponse{}
	for _, e := range list {
		out.Entries = append(out.Entries, &edgev1.AuditEntry{
			Id:       e.ID,
			At:       ts(e.At),
			TenantId: e.TenantID,
			Actor:    e.Actor,
			Action:   e.Action,
			NodeId:   e.NodeID,
			Result:   e.Result,
			Details:  e.Details,
			PrevHash: e.PrevHash,
			Hash:     e.Hash,
		})
	}
	return connect.NewResponse(out), nil
}

// VerifyAudit implements EdgeAdminService.VerifyAudit. A broken chain is an answer
// (ok false), not an RPC error.
func (a *Admin) VerifyAudit(ctx context.Context, _ *connect.Request[edgev1.VerifyAuditRequest]) (*connect.Response[edgev1.VerifyAuditResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	r, err := audit.Verify(ctx, a.cfg.Store)
	if err != nil {
		return nil, a.fail(ctx, "VerifyAudit", err)
	}
	out := &edgev1.VerifyAuditResponse{Ok: r.Break == nil, EntriesChecked: r.Checked}
	if r.Break != nil {
		out.FirstBadId, out.Problem = r.Break.ID, r.Break.Problem
		a.cfg.Logger.WarnContext(ctx, "audit chain broken", "operator", p.TokenID, "first_bad_id", r.Break.ID, "problem", r.Break.Problem)
	}
	return connect.NewResponse(out), nil
}
