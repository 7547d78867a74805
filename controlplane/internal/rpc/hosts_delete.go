package rpc

import (
	"context"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

// DeleteHost implements EdgeAdminService.DeleteHost: a revoked host leaves the list.
func (a *Admin) DeleteHost(ctx context.Context, req *connect.Request[edgev1.DeleteHostRequest]) (*connect.Response[edgev1.DeleteHostResponse], error) {
	p, err := a.principal(ctx)
	if err != nil {
		return nil, err
	}
	h, err := a.cfg.Hosts.Delete(ctx, p, req.Msg.GetNodeId())
	if err != nil {
		return nil, a.fail(ctx, "DeleteHost", err)
	}
	a.cfg.Logger.InfoContext(ctx, "host deleted", "operator", p.TokenID, "node", h.Daemon.NodeID)
	return connect.NewResponse(&edgev1.DeleteHostResponse{Host: hostPB(h)}), nil
}
