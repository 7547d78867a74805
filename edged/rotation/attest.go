package rotation

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/seal"
)

// AttestResult is a fresh token.
type AttestResult struct {
	Token   string
	Expires time.Time
}

// Attest proves possession of key for nodeID against a fresh server nonce and returns
// the new token (the control plane blacklists the node's other tokens). learn, if not
// nil, is given the server's clock from each reply. The error is the RPC's own, so
// callers can act on its rejection reason.
func Attest(ctx context.Context, client edgev1connect.NodeClusterServiceClient, nodeID string, key ed25519.PrivateKey, timeout time.Duration, learn func(time.Time)) (AttestResult, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	ch, err := client.Challenge(ctx, connect.NewRequest(&edgev1.ChallengeRequest{
		Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ATTEST,
		NodeId:  nodeID,
	}))
	if err != nil {
		return AttestResult{}, fmt.Errorf("attest: challenge: %w", err)
	}
	if learn != nil {
		learn(ch.Msg.GetServerTime().AsTime())
	}
	p := pub(key)
	nonce := ch.Msg.GetNonce()
	resp, err := client.Attest(ctx, connect.NewRequest(&edgev1.AttestRequest{
		NodeId:    nodeID,
		PublicKey: p,
		Nonce:     nonce,
		Signature: ed25519.Sign(key, seal.AttestMessage(nonce, nodeID, p)),
	}))
	if err != nil {
		return AttestResult{}, fmt.Errorf("attest: %w", err)
	}
	if learn != nil {
		learn(resp.Msg.GetServerTime().AsTime())
	}
	tok := resp.Msg.GetNodeSecurityToken()
	if tok == "" {
		return AttestResult{}, errors.New("attest: the control plane returned no token")
	}
	exp := TokenExpiry(tok)
	if exp.IsZero() {
		exp = resp.Msg.GetTokenExpiresAt().AsTime()
	}
	return AttestResult{Token: tok, Expires: exp}, nil
}

// RefreshToken re-attests with the existing key and writes the new token to
// node.token atomically (aegis edge token refresh on a stopped host; the daemon does
// the same in memory too). A rotation left pending is reconciled first.
func (h *Host) RefreshToken(ctx context.Context) (AttestResult, error) {
	unlock, err := h.lock(ctx)
	if err != nil {
		return AttestResult{}, err
	}
	defer unlock()
	if _, err := h.reconcileLocked(ctx); err != nil {
		return AttestResult{}, err
	}
	id, err := h.load()
	if err != nil {
		return AttestResult{}, err
	}
	res, err := Attest(ctx, h.cfg.Client, id.NodeID, id.Key, h.cfg.RPCTimeout, h.learn)
	if err != nil {
		return AttestResult{}, Explain("token refresh", err)
	}
	if err := h.cfg.Dir.WriteToken(res.Token); err != nil {
		return AttestResult{}, fmt.Errorf("%w: the new token could not be saved (the next start re-attests): %v", ErrLocal, err)
	}
	id.Token = res.Token
	h.changed(id)
	return res, nil
}
