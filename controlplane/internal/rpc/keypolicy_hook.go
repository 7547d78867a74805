package rpc

import (
	"context"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The stream's two touch points with routine rotation, kept here so cluster.go only
// calls them: the Welcome carries the host's policy max key age, and a policy change
// reaches a connected stream as a RotationPolicyCommand.

// withPolicyMax sets w.MaxKeyAge. A store failure leaves it unset (the daemon keeps
// its local setting and learns the policy on a later stream): the stream is not
// refused for it.
func (c *Cluster) withPolicyMax(ctx context.Context, nodeID string, w *edgev1.Welcome) {
	if c.cfg.KeyPolicy == nil {
		return
	}
	m, err := c.cfg.KeyPolicy.NodeMax(ctx, nodeID)
	if err != nil {
		c.cfg.Logger.WarnContext(ctx, "rotation policy for welcome", "node", nodeID, "err", err)
		return
	}
	if m > 0 {
		w.MaxKeyAge = durationpb.New(m)
	}
}

func rotationPolicyPB(c session.Command) *edgev1.EdgeCommand {
	rp := &edgev1.RotationPolicyCommand{}
	if c.MaxKeyAge > 0 {
		rp.MaxKeyAge = durationpb.New(c.MaxKeyAge)
	}
	return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_RotationPolicy{RotationPolicy: rp}}
}
