package swarm

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
)

// Admin is the control plane's admin API as the bootstrap admin, like
// srv.AdminClient, but safe to call while srv.Restart runs on another goroutine (a
// watcher re-attaching across a restart): the URL and token are taken once, and the
// HTTP client is fetched under cptest's lock.
func (s *Swarm) Admin() edgev1connect.EdgeAdminServiceClient {
	return edgev1connect.NewEdgeAdminServiceClient(s.srv.HTTPClient(), s.url, connect.WithInterceptors(bearer(s.adminToken)))
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Hosts is the control plane's host list (admin API), by node id.
func (s *Swarm) Hosts(ctx context.Context) (map[string]*edgev1.Host, error) {
	resp, err := s.Admin().ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("swarm: list hosts: %w", err)
	}
	hosts := make(map[string]*edgev1.Host, len(resp.Msg.GetHosts()))
	for _, h := range resp.Msg.GetHosts() {
		hosts[h.GetNodeId()] = h
	}
	return hosts, nil
}

// Rotations counts the key rotations the control plane committed, per node id, from
// its audit trail (one "rotate" entry is written in the transaction that records
// each Rotation row).
func (s *Swarm) Rotations(ctx context.Context) (map[string]int, error) {
	counts := map[string]int{}
	var after int64
	for {
		entries, err := s.srv.Store.ListAudit(ctx, "", after, 1000)
		if err != nil {
			return nil, fmt.Errorf("swarm: list audit: %w", err)
		}
		for _, e := range entries {
			if e.Action == "rotate" && e.Result == "ok" {
				counts[e.NodeID]++
			}
			after = e.ID
		}
		if len(entries) < 1000 {
			return counts, nil
		}
	}
}
