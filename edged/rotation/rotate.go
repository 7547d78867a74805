package rotation

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// RotateOptions of one rotation.
type RotateOptions struct {
	// KeepOld is how long the archived old key is kept; 0 means DefaultKeepOld.
	KeepOld time.Duration
	// FleetRunID names the fleet run that asked for this rotation, if any (logged).
	FleetRunID string
	// IfKey, when set, is the fingerprint of the key to replace: the rotation runs
	// only while that key is the one in use. The daemon's scheduler decides to rotate
	// a key before it holds the state dir's lock; meanwhile a reconcile on reconnect
	// or `aegis edge keys rotate` may replace the key, and rotating again would be a
	// second rotation for one due key. A pending rotation of that key, finished here,
	// is reported as this one; a key replaced otherwise is ErrKeyChanged.
	IfKey string
}

// Result of a completed rotation.
type Result struct {
	RotationID        string
	NodeID            string
	OldKeyFingerprint string
	NewKeyFingerprint string
	// ArchivedKey is the absolute path of the old key in the archive.
	ArchivedKey    string
	ArchiveExpires time.Time
	TokenExpires   time.Time
	// OverlapUntil is when the control plane stops accepting the old key on streams
	// that were already open (zero when the rotation was finished by a reconcile).
	OverlapUntil time.Time
}

// Rotate runs the five steps of the guide. A rotation left pending by an earlier
// crash is reconciled first. On a definitive refusal nothing changes locally (the old
// key stays); when the outcome is unknown (ErrPending) the host keeps its old key and
// the next Reconcile finishes or discards the rotation.
func (h *Host) Rotate(ctx context.Context, opts RotateOptions) (Result, error) {
	if opts.KeepOld < 0 {
		return Result{}, fmt.Errorf("%w: --keep-old must not be negative", ErrLocal)
	}
	if opts.KeepOld == 0 {
		opts.KeepOld = DefaultKeepOld
	}
	unlock, err := h.lock(ctx)
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	settled, err := h.reconcileLocked(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("an earlier rotation is not settled yet: %w", err)
	}
	if f := settled.Finished; f != nil && (opts.FleetRunID != "" || opts.IfKey != "" && f.OldKeyFingerprint == opts.IfKey) {
		// A fleet run (or the scheduler, for one key) asks for one rotation: the one
		// left pending, now finished, is it. Starting another would rotate the host
		// twice for one request.
		h.log.Info("finished a pending key rotation and reported it as the one asked for",
			"rotation_id", f.RotationID, "fleet_run_id", opts.FleetRunID)
		return *f, nil
	}
	id, err := h.load()
	if err != nil {
		return Result{}, err
	}
	if opts.IfKey != "" && FingerprintOf(id.Key) != opts.IfKey {
		return Result{}, fmt.Errorf("%w: %s is in use, not %s; nothing to rotate", ErrKeyChanged, FingerprintOf(id.Key), opts.IfKey)
	}

	// S1: the new key and the request's identity, durable before anything is sent,
	// so a reconcile can always resend the very same request.
	newPub, newKey, err := ed25519.GenerateKey(h.cfg.Rand)
	if err != nil {
		return Result{}, fmt.Errorf("%w: generate key: %v", ErrLocal, err)
	}
	rid, err := newRotationID(h.cfg.Rand)
	if err != nil {
		return Result{}, fmt.Errorf("%w: rotation id: %v", ErrLocal, err)
	}
	rec := record{
		RotationID:      rid,
		NodeID:          id.NodeID,
		TimestampUnixMs: h.cfg.ServerNow().UnixMilli(),
		KeepOld:         opts.KeepOld.String(),
		FleetRunID:      opts.FleetRunID,
		OldKey:          FingerprintOf(id.Key),
		NewKey:          fingerprint.Of(newPub),
	}
	// Both files and their directory entries must be durable before S2: once the
	// server may have committed, a host that lost node.key.next would hold no key the
	// server accepts. One fsync of the directory covers both (see fsyncs, below).
	s1 := h.cfg.Dir.Batch()
	if err := s1.WriteKey(keystore.KeyNextFile, newKey); err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if err := h.writeRecord(s1, rec); err != nil {
		_ = h.cfg.Dir.Remove(keystore.KeyNextFile)
		return Result{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if err := s1.Sync(); err != nil {
		_ = h.cfg.Dir.Remove(keystore.KeyNextFile)
		return Result{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if err := h.fault(StepNextKey); err != nil {
		return Result{}, err
	}
	h.log.Info("rotating the node key", "rotation_id", rid, "old_key_fingerprint", rec.OldKey, "new_key_fingerprint", rec.NewKey, "fleet_run_id", opts.FleetRunID)

	// S2.
	resp, id, err := h.send(ctx, id, rec, newKey)
	if err != nil {
		switch classify(err) {
		case refused, terminal:
			// A definitive answer: the server committed nothing. Keep the old key.
			if derr := h.discard(); derr != nil {
				h.log.Error("could not remove the refused rotation's files; the next reconcile will", "error", derr)
			}
			return Result{}, Explain("key rotation", err)
		}
		// The outcome is unknown (a lost reply looks like this): ask the server.
		h.log.Warn("the rotation's reply was not received; reconciling with the control plane", "rotation_id", rid, "error", err)
		rc, rerr := h.reconcileLocked(ctx)
		if rerr != nil {
			return Result{}, rerr
		}
		if rc.Finished != nil {
			return *rc.Finished, nil
		}
		return Result{}, fmt.Errorf("%w: the control plane did not accept rotation %s; the old key stays in use", ErrRefused, rid)
	}
	if err := h.fault(StepCommitted); err != nil {
		return Result{}, err
	}
	h.learn(resp.GetServerTime().AsTime())
	res, err := h.finish(id, rec, newKey, resp.GetNodeSecurityToken())
	if err != nil {
		return Result{}, err
	}
	res.OverlapUntil = resp.GetOverlapUntil().AsTime()
	return res, nil
}

// send calls RotateEdgeKey for rec: the payload carries the new key's proof of
// possession (deterministic, so a resend is byte-for-byte the same request), the
// envelope the old key's authority. Callers hold the lock.
func (h *Host) send(ctx context.Context, id Identity, rec record, newKey ed25519.PrivateKey) (*edgev1.RotateEdgeKeyResponse, Identity, error) {
	newPub := pub(newKey)
	at := time.UnixMilli(rec.TimestampUnixMs)
	payload := &edgev1.RotateEdgeKeyRequest{
		RotationId:      rec.RotationID,
		NodeId:          id.NodeID,
		NewPublicKey:    newPub,
		TimestampUnixMs: rec.TimestampUnixMs,
		NewKeySignature: ed25519.Sign(newKey, seal.RotateNewKeyMessage(rec.RotationID, id.NodeID, pub(id.Key), newPub, at)),
		FleetRunId:      rec.FleetRunID,
	}
	var resp *edgev1.RotateEdgeKeyResponse
	id, err := h.sealed(ctx, id, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, payload, func(ctx context.Context, env *edgev1.SealNodeEnvelope) error {
		r, err := h.cfg.Client.RotateEdgeKey(ctx, connect.NewRequest(env))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	if err != nil {
		return nil, id, err
	}
	if resp.GetNodeSecurityToken() == "" {
		return nil, id, connect.NewError(connect.CodeInternal, errors.New("the control plane's reply has no token"))
	}
	return resp, id, nil
}

// finish is S3..S7 once the server has committed: every step is idempotent, so a
// reconcile can run it again from the top after a crash anywhere in it. old.Key is
// node.key (the old key) unless S5 already happened.
func (h *Host) finish(old Identity, rec record, newKey ed25519.PrivateKey, token string) (Result, error) {
	d := h.cfg.Dir
	res := Result{
		RotationID:        rec.RotationID,
		NodeID:            old.NodeID,
		OldKeyFingerprint: rec.OldKey,
		NewKeyFingerprint: FingerprintOf(newKey),
		TokenExpires:      TokenExpiry(token),
	}
	local := func(err error) error {
		return fmt.Errorf("%w: finishing rotation %s: %v (the next start finishes it)", ErrLocal, rec.RotationID, err)
	}
	// S3..S7 share one fsync of the state directory (see fsyncs, below).
	b := d.Batch()
	// S3
	if err := b.WriteFile(keystore.TokenNextFile, []byte(token+"\n")); err != nil {
		return res, local(err)
	}
	if err := h.fault(StepTokenNext); err != nil {
		return res, err
	}
	// S4: only while node.key is still the old key (a crash after S5 has nothing left
	// to archive: it was archived before). Durable before S5, in the archive's own
	// directory, so the old key is never lost.
	keyNext, err := d.Exists(keystore.KeyNextFile)
	if err != nil {
		return res, local(err)
	}
	if keyNext {
		path, until, err := h.archive(b, old.Key, rec)
		if err != nil {
			return res, local(err)
		}
		res.ArchivedKey, res.ArchiveExpires = path, until
	} else if e, ok := h.archived(rec.RotationID); ok {
		res.ArchivedKey, res.ArchiveExpires = d.File(keystore.ArchiveDir+"/"+e.File), e.DeleteAfter
	}
	if err := h.fault(StepArchived); err != nil {
		return res, err
	}
	// S5
	if keyNext {
		if err := b.Rename(keystore.KeyNextFile, keystore.KeyFile); err != nil {
			return res, local(err)
		}
	}
	if err := h.fault(StepKeySwapped); err != nil {
		return res, err
	}
	// S6
	if err := b.Rename(keystore.TokenNextFile, keystore.TokenFile); err != nil {
		return res, local(err)
	}
	if err := h.fault(StepTokenSwapped); err != nil {
		return res, err
	}
	// S7
	if err := b.Remove(keystore.RotationFile); err != nil {
		return res, local(err)
	}
	if err := b.Sync(); err != nil {
		return res, local(err)
	}
	if err := h.fault(StepDone); err != nil {
		return res, err
	}
	h.changed(Identity{NodeID: old.NodeID, Key: newKey, Token: token})
	h.log.Info("node key rotated", "rotation_id", rec.RotationID, "old_key_fingerprint", rec.OldKey,
		"new_key_fingerprint", res.NewKeyFingerprint, "archived_key", res.ArchivedKey, "archive_expires", res.ArchiveExpires, "token_expires", res.TokenExpires)
	return res, nil
}

// fsyncs: a rotation makes 7 (it made 14, counted with strace on `aegis edge keys
// rotate` for a stopped host), each one needed:
//
//   - S1: the data of node.key.next and of rotation.json, and one fsync of the
//     directory for both entries, before the request is sent (3).
//   - S3: the data of node.token.next, so that the token a rename puts in place is
//     never a torn file (1). archive.json's data is not fsynced: a torn index only
//     loses retention choices (readIndex falls back to the default).
//   - S4: the archived key's data and the archive directory's entry, before S5
//     replaces node.key, so that the old key is kept as --keep-old promises (2).
//   - S7: one fsync of the state directory for S3..S7's entries (1). Until it
//     returns, a crash keeps a prefix of those changes (a journaling file system
//     applies one directory's metadata changes in order), and every prefix is a
//     state an earlier crash point also leaves: before S3, after S3, S4, S5 or S6.
//     Reconcile heals each of them; the fault tests crash at every one of them.
//
// The old code fsynced the directory after every step; those fsyncs ordered steps
// that reconcile does not need ordered beyond what the journal gives.

// discard drops a rotation the server never committed: token first, key, then the
// record, so a crash half way is still recognised as "nothing to finish".
func (h *Host) discard() error {
	d := h.cfg.Dir
	return errors.Join(d.Remove(keystore.TokenNextFile), d.Remove(keystore.KeyNextFile), d.Remove(keystore.RotationFile))
}
