package rotation

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// LogoutResult says what a logout did.
type LogoutResult struct {
	NodeID string
	// ServerNotified: the control plane acknowledged (or already considered the node
	// gone). False when it could not be reached: the local state is removed anyway.
	ServerNotified bool
	// Error is why the server was not notified (one line, no secrets).
	Error string
}

// Logout tells the control plane the host is leaving (best effort, bounded by
// LogoutTimeout), then removes the key, token, any pending rotation, the archive and
// the identity files, so the host can enroll again. It works offline. A client of nil
// skips the server.
func (h *Host) Logout(ctx context.Context) (LogoutResult, error) {
	unlock, err := h.lock(ctx)
	if err != nil {
		return LogoutResult{}, err
	}
	defer unlock()
	node, err := h.cfg.Dir.ReadNode()
	if err != nil {
		return LogoutResult{}, err
	}
	res := LogoutResult{NodeID: node.NodeID}
	if h.cfg.Client != nil {
		lctx, cancel := context.WithTimeout(ctx, h.cfg.LogoutTimeout)
		err := h.tellServer(lctx)
		cancel()
		switch {
		case err == nil:
			res.ServerNotified = true
		case classify(err) == terminal:
			// Already revoked or unknown: the server holds nothing for us any more.
			res.ServerNotified = true
		default:
			res.Error = Explain("logout", err).Error()
			h.log.Warn("could not tell the control plane about the logout; removing the local identity anyway", "error", res.Error)
		}
	}
	if err := h.cfg.Dir.RemoveIdentity(); err != nil {
		return res, fmt.Errorf("%w: removing the identity from %s: %v", ErrLocal, h.cfg.Dir.Path(), err)
	}
	return res, nil
}

func (h *Host) tellServer(ctx context.Context) error {
	id, err := h.load()
	if err != nil {
		return err
	}
	// A rotation in flight may have moved the server to the next key already.
	if next, err := h.readKeyFile(keystore.KeyNextFile); err == nil {
		if att, err := Attest(ctx, h.cfg.Client, id.NodeID, next, 0, h.learn); err == nil {
			id.Key, id.Token = next, att.Token
		}
	}
	_, err = h.sealed(ctx, id, edgev1.EnvelopeKind_ENVELOPE_KIND_LOGOUT, &edgev1.LogoutRequest{NodeId: id.NodeID},
		func(ctx context.Context, env *edgev1.SealNodeEnvelope) error {
			_, err := h.cfg.Client.Logout(ctx, connect.NewRequest(env))
			return err
		})
	return err
}
