package rotation

import (
	"context"
	"fmt"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// Reconciled says what a Reconcile did.
type Reconciled struct {
	// Finished is set when a rotation the server had committed was completed locally.
	Finished *Result
	// Discarded: a rotation the server never committed was dropped; the old key stays.
	Discarded bool
	// TokenSwapped: a token waiting in node.token.next was moved in.
	TokenSwapped bool
}

// Reconcile settles whatever an interrupted rotation left in the state directory, by
// asking the control plane which key is current when the files cannot tell:
//
//   - node.key.next without rotation.json: the request was never sent; discard it.
//   - node.token.next bound to node.key.next: the server committed; finish the swap.
//   - else attest with the next key: accepted, the server rotated: finish with the
//     token it gave. Refused because it is not the node's key: resend the same
//     request (same rotation_id, timestamp and proof; a fresh envelope by the old
//     key). Accepted: finish; definitively refused: discard, keep the old key.
//     Unreachable: leave everything (ErrPending); the host keeps the old key.
//   - only node.token.next: the key was already swapped; move the token in if it is
//     bound to node.key, else drop it and attest for a new one.
//   - rotation.json with nothing pending is removed; so are temp files.
//
// edged runs it on start and after a failed step; aegisctl before host commands.
func (h *Host) Reconcile(ctx context.Context) (Reconciled, error) {
	unlock, err := h.lock(ctx)
	if err != nil {
		return Reconciled{}, err
	}
	defer unlock()
	return h.reconcileLocked(ctx)
}

// Pending reports whether a rotation is waiting to be reconciled.
func Pending(dir *keystore.Dir) (bool, error) {
	for _, n := range []string{keystore.KeyNextFile, keystore.TokenNextFile, keystore.RotationFile} {
		ok, err := dir.Exists(n)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func (h *Host) reconcileLocked(ctx context.Context) (Reconciled, error) {
	d := h.cfg.Dir
	if err := d.RemoveTemps(); err != nil {
		return Reconciled{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	hasNext, err := d.Exists(keystore.KeyNextFile)
	if err != nil {
		return Reconciled{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if hasNext {
		return h.reconcileNext(ctx)
	}
	var out Reconciled
	hasTokNext, err := d.Exists(keystore.TokenNextFile)
	if err != nil {
		return out, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if hasTokNext {
		id, err := h.load()
		if err != nil {
			return out, err
		}
		tok, terr := h.readTokenFile(keystore.TokenNextFile)
		if terr == nil && tokenKey(tok) == FingerprintOf(id.Key) {
			if err := d.Rename(keystore.TokenNextFile, keystore.TokenFile); err != nil {
				return out, fmt.Errorf("%w: %v", ErrLocal, err)
			}
			id.Token = tok
			out.TokenSwapped = true
			h.log.Info("finished an interrupted key rotation: moved its token in")
			h.changed(id)
		} else {
			if err := d.Remove(keystore.TokenNextFile); err != nil {
				return out, fmt.Errorf("%w: %v", ErrLocal, err)
			}
			if tokenKey(id.Token) != FingerprintOf(id.Key) {
				// Best effort: the daemon re-attests anyway when its token is refused.
				if _, err := h.reattest(ctx, id); err != nil {
					h.log.Warn("node.token is not bound to node.key and a new one could not be had yet", "error", err)
				}
			}
		}
	}
	if err := d.Remove(keystore.RotationFile); err != nil {
		return out, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	return out, nil
}

// reconcileNext handles node.key.next: node.key is still the old key.
func (h *Host) reconcileNext(ctx context.Context) (Reconciled, error) {
	var out Reconciled
	rec, ok := h.readRecord()
	nextKey, kerr := h.readKeyFile(keystore.KeyNextFile)
	if !ok || kerr != nil {
		// S1 did not complete, so nothing was ever sent for this key.
		h.log.Info("discarding a key rotation that never reached the control plane")
		if err := h.discard(); err != nil {
			return out, fmt.Errorf("%w: %v", ErrLocal, err)
		}
		out.Discarded = true
		return out, nil
	}
	old, err := h.load()
	if err != nil {
		return out, err
	}
	nextFP := FingerprintOf(nextKey)
	if tok, err := h.readTokenFile(keystore.TokenNextFile); err == nil && tokenKey(tok) == nextFP {
		// S3 happened: the server had committed. Finish without the network.
		res, err := h.finish(old, rec, nextKey, tok)
		if err != nil {
			return out, err
		}
		out.Finished = &res
		return out, nil
	}

	// Ask the server which key is current.
	att, err := Attest(ctx, h.cfg.Client, old.NodeID, nextKey, h.cfg.RPCTimeout, h.learn)
	if err == nil {
		h.log.Info("the control plane already holds the new key; finishing the interrupted rotation", "rotation_id", rec.RotationID)
		res, err := h.finish(old, rec, nextKey, att.Token)
		if err != nil {
			return out, err
		}
		out.Finished = &res
		return out, nil
	}
	switch classify(err) {
	case transient:
		return out, fmt.Errorf("%w: rotation %s: %v; the old key stays in use until the control plane can be asked", ErrPending, rec.RotationID, Explain("reconcile", err))
	case terminal:
		if derr := h.discard(); derr != nil {
			return out, fmt.Errorf("%w: %v", ErrLocal, derr)
		}
		out.Discarded = true
		return out, Explain("reconcile", err)
	}
	if reject.Reason(err) != edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH {
		h.log.Warn("attesting with the pending key was refused for an unexpected reason; resending the rotation", "error", err)
	}
	resp, _, err := h.send(ctx, old, rec, nextKey)
	if err == nil {
		h.learn(resp.GetServerTime().AsTime())
		h.log.Info("the control plane accepted the resent rotation; finishing it", "rotation_id", rec.RotationID)
		res, err := h.finish(old, rec, nextKey, resp.GetNodeSecurityToken())
		if err != nil {
			return out, err
		}
		res.OverlapUntil = resp.GetOverlapUntil().AsTime()
		out.Finished = &res
		return out, nil
	}
	if classify(err) == transient {
		return out, fmt.Errorf("%w: rotation %s: %v; the old key stays in use until the control plane can be asked", ErrPending, rec.RotationID, Explain("reconcile", err))
	}
	h.log.Warn("the control plane refused the pending rotation; keeping the old key", "rotation_id", rec.RotationID, "error", err)
	if derr := h.discard(); derr != nil {
		return out, fmt.Errorf("%w: %v", ErrLocal, derr)
	}
	out.Discarded = true
	if classify(err) == terminal {
		return out, Explain("reconcile", err)
	}
	return out, nil
}
