package rpc

import (
	"context"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The stream's touch points with routine rotation, kept here so cluster.go only
// calls them: the Hello carries the host's own max key age (stored with the host), the
// Welcome carries the host's policy max key age, and a policy change reaches a
// connected stream as a RotationPolicyCommand.

// localMaxKeyAge is the host's own maximum from its Hello: 0 when unset, and when
// unusable (not positive, or not a valid duration): a daemon's odd report must not
// make the host look overdue or refuse its stream; edged validates its config.
func localMaxKeyAge(h *edgev1.Hello) time.Duration {
	d := h.GetLocalMaxKeyAge()
	if d == nil || d.CheckValid() != nil || d.AsDuration() <= 0 {
		return 0
	}
	return d.AsDuration()
}

// policyMax is the host's policy max key age for its Welcome, 0 for none. A store
// failure leaves it unset (the daemon keeps its local setting and learns the policy
// on a later stream): the stream is not refused for it.
func (c *Cluster) policyMax(ctx context.Context, nodeID string) time.Duration {
	if c.cfg.KeyPolicy == nil {
		return 0
	}
	m, err := c.cfg.KeyPolicy.NodeMax(ctx, nodeID)
	if err != nil {
		c.cfg.Logger.WarnContext(ctx, "rotation policy for welcome", "node", nodeID, "err", err)
		return 0
	}
	return m
}

func rotationPolicyPB(c session.Command) *edgev1.EdgeCommand {
	rp := &edgev1.RotationPolicyCommand{}
	if c.MaxKeyAge > 0 {
		rp.MaxKeyAge = durationpb.New(c.MaxKeyAge)
	}
	return &edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_RotationPolicy{RotationPolicy: rp}}
}
