// Package rotation owns the control plane's side of an edge key rotation
// (DESIGN.md §3): the one transaction that checks both signatures — the envelope by
// the node's current key with its current token (authority), the new key's over
// seal.RotateNewKeyMessage (possession) — and then claims the new key forever,
// compare-and-swaps it in with the old one kept for the overlap, withdraws the old
// token, issues one bound to the new key, and records the outcome under the
// daemon's rotation_id, so that a retried request gets the very same answer. On any
// refusal nothing is written.
package rotation

import (
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
)

const (
	// DefaultOverlap is how long the previous key stays good on streams that
	// verified it before the rotation.
	DefaultOverlap = 60 * time.Second
	// MaxRequestAge bounds how old a request's own timestamp may be: a daemon
	// retrying a lost reply does so within minutes, and a captured request must not
	// be good forever.
	MaxRequestAge = 10 * time.Minute
)

// rotationIDPattern accepts a UUID (what daemons send) and similar opaque ids, and
// keeps ids short and printable since they are stored, logged and audited.
var rotationIDPattern = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._-]{7,63}$`)

// fleetRunIDPattern is the fleet engine's run id; the daemon echoes it from its
// RotateKeyCommand, and only well-formed ids reach the audit trail.
var fleetRunIDPattern = regexp.MustCompile(`^fr-[0-9a-f]{16}$`)

// Config wires a Service.
type Config struct {
	Store     store.Store
	Auth      *nodeauth.Service
	Issuer    *tokens.Issuer
	Blacklist *tokens.Blacklist
	// Now is the protocol clock.
	Now          func() time.Time
	MaxClockSkew time.Duration
	// Overlap: 0 means DefaultOverlap.
	Overlap time.Duration
	Metrics *metrics.Metrics
}

// Service performs rotations. Safe for concurrent use: rotations of different
// nodes are independent transactions; of one node, the key compare-and-swap picks
// one winner.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Overlap == 0 {
		cfg.Overlap = DefaultOverlap
	}
	return &Service{cfg: cfg}
}

// Request is one RotateEdgeKey call: the envelope as received and its payload as
// decoded by the transport. The envelope's signature covers the payload's bytes, so
// the decoded fields are trusted only once the envelope verifies.
type Request struct {
	Envelope *edgev1.SealNodeEnvelope
	// PayloadErr is why the payload did not decode (nil if it did).
	PayloadErr      error
	RotationID      string
	NodeID          string
	NewPublicKey    []byte
	At              time.Time
	NewKeySignature []byte
	// FleetRunID names the fleet run that asked for this rotation, for the audit
	// entry; "" when the host rotated on its own. RotateEdgeKeyRequest does not carry
	// it, so the fleet machinery supplies it when it knows.
	FleetRunID string
}

// Result is a committed rotation, fresh or replayed.
type Result struct {
	RotationID     string
	NodeID         string
	Token          string
	TokenExpires   time.Time
	NewFingerprint string
	OldFingerprint string
	OverlapUntil   time.Time
	RotatedAt      time.Time
	// Replayed: this request repeated an already committed rotation_id.
	Replayed bool
}

// Rotate performs (or replays) one rotation. Refusals are *rejection.Error.
func (s *Service) Rotate(ctx context.Context, req Request) (Result, error) {
	start := time.Now()
	res, err := s.rotate(ctx, req)
	result, reason := "ok", "none"
	switch r, refused := rejection.As(err); {
	case refused:
		result, reason = "refused", reject.Short(r.Reason)
	case err != nil:
		result, reason = "error", "internal"
	case res.Replayed:
		result = "replayed"
	}
	s.cfg.Metrics.KeyRotation(result, reason, time.Since(start))
	return res, err
}

func (s *Service) rotate(ctx context.Context, req Request) (Result, error) {
	// The stores keep microseconds: rounding here makes the first answer and every
	// replay of it (read back from the store) report the very same times.
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	env := req.Envelope
	if err := seal.CheckShape(env); err != nil {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "%v", err)
	}
	if env.GetKind() != edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "envelope kind %s is not a key rotation", env.GetKind())
	}
	if req.PayloadErr != nil {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "payload is not a RotateEdgeKeyRequest")
	}
	if req.NodeID != env.GetNodeId() {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "the request names another node than its envelope")
	}
	if req.FleetRunID != "" && !fleetRunIDPattern.MatchString(req.FleetRunID) {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "fleet_run_id must be empty or fr- and 16 hex digits")
	}
	if !rotationIDPattern.MatchString(req.RotationID) {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "rotation_id must be a UUID (8 to 64 letters, digits, '.', '_' or '-')")
	}

	// The checks that are pure crypto (both signatures, the token's) and the new
	// token's signature run before the transaction: they need no lock, and on SQLite
	// the work inside transactions runs one at a time. The transaction then commits
	// only if the node still has the key and the active status they verified: the
	// compare-and-swap of step 4 decides, as it does between concurrent rotations.
	pre, preErr := s.precheck(ctx, req, now)
	var w store.RotationWrite
	if preErr == nil {
		// The common case, a fresh rotation that every check passed, as one write
		// of its own: on PostgreSQL one statement, one round trip that commits. If
		// any of its writes would fail (the id is already recorded, the key
		// claimed, the swap lost), nothing is written, and the transaction below,
		// one step at a time, says why.
		w = s.writes(req, pre, now)
		switch applied, err := s.cfg.Store.ApplyRotation(ctx, w); {
		case err != nil:
			return Result{}, fmt.Errorf("apply rotation: %w", err)
		case applied:
			s.cfg.Blacklist.Add(w.Blacklist)
			return result(w, pre), nil
		}
	}

	var res Result
	var added []store.BlacklistEntry
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		added = added[:0]
		// 1. Idempotency first: a retry carries the old token, which the first
		// attempt blacklisted, so it must be recognised before the envelope checks.
		prev, err := tx.GetRotation(ctx, req.RotationID)
		switch {
		case err == nil:
			res, err = s.replay(ctx, tx, req, prev, now)
			return err
		case !errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("look up rotation: %w", err)
		}

		// 2 and 3 (precheck): authority, and the new key's proof of possession.
		if preErr != nil {
			return preErr
		}
		nodeID := w.NodeID
		// 3. The new key, claimed for this node forever.
		switch err := tx.ClaimPublicKey(ctx, w.NewKey, nodeID, w.At); {
		case errors.Is(err, store.ErrKeyInUse):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_KEY_IN_USE, "the new key was already used by a daemon (keys are never reused): generate another")
		case err != nil:
			return fmt.Errorf("claim new key: %w", err)
		}

		// 4. The swap: the compare-and-swap from the key this transaction verified
		// is what decides between concurrent rotations of one node.
		switch err := tx.SwapDaemonKey(ctx, nodeID, w.OldKey, w.NewKey, w.OverlapUntil, w.At); {
		case errors.Is(err, store.ErrConflict):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT, "another rotation of node %s committed first: check which key is current (attest) before retrying", nodeID)
		case errors.Is(err, store.ErrKeyInUse):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_KEY_IN_USE, "the new key is held by another daemon: generate another")
		case errors.Is(err, store.ErrNotFound):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE, "node %s is not enrolled", nodeID)
		case err != nil:
			return fmt.Errorf("swap key: %w", err)
		}

		// 5. Withdraw the old token; issue and record one bound to the new key.
		if err := tx.BlacklistToken(ctx, w.Blacklist); err != nil {
			return fmt.Errorf("blacklist old token: %w", err)
		}
		added = append(added, w.Blacklist)
		if err := tx.InsertNodeToken(ctx, w.Token); err != nil {
			return fmt.Errorf("record new token: %w", err)
		}
		switch err := tx.InsertRotation(ctx, w.Rotation); {
		case errors.Is(err, store.ErrConflict):
			// The same id committed by a concurrent request since step 1.
			return rejection.New(edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT, "rotation %s is being committed by another request: retry it", req.RotationID)
		case err != nil:
			return fmt.Errorf("record rotation: %w", err)
		}
		if _, err := tx.AppendAudit(ctx, w.Audit); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		res = result(w, pre)
		return nil
	})
	if err != nil {
		// A request racing its own retry loses the key claim or the id to it, though
		// the answer it wants is now committed: look once more, outside the lost
		// transaction.
		if r := rejection.Reason(err); r == edgev1.RejectReason_REJECT_REASON_KEY_IN_USE || r == edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT {
			if again, ok := s.replayAfterRace(ctx, req, now); ok {
				return again, nil
			}
		}
		return Result{}, err
	}
	s.cfg.Blacklist.Add(added...)
	return res, nil
}

// writes is what a fresh rotation writes, from what precheck verified and issued.
func (s *Service) writes(req Request, pre prechecked, now time.Time) store.RotationWrite {
	d, claims, issued := pre.v.Daemon, pre.v.Claims, pre.issued
	overlapUntil := now.Add(s.cfg.Overlap)
	rot := store.Rotation{
		RotationID:     req.RotationID,
		NodeID:         d.NodeID,
		OldFingerprint: fingerprint.Of(d.PublicKey),
		NewFingerprint: fingerprint.Of(req.NewPublicKey),
		NewTokenJTI:    issued.Record.JTI,
		NewToken:       issued.Token,
		At:             now,
	}
	details := map[string]string{
		"rotation_id":     req.RotationID,
		"old_fingerprint": rot.OldFingerprint,
		"new_fingerprint": rot.NewFingerprint,
		"overlap_until":   overlapUntil.Format(time.RFC3339Nano),
	}
	if req.FleetRunID != "" {
		details["fleet_run_id"] = req.FleetRunID
	}
	return store.RotationWrite{
		NodeID:       d.NodeID,
		OldKey:       d.PublicKey,
		NewKey:       req.NewPublicKey,
		OverlapUntil: overlapUntil,
		At:           now,
		Blacklist:    store.BlacklistEntry{JTI: claims.JTI(), NodeID: d.NodeID, Reason: nodeauth.BlacklistReasonRotated, ExpiresAt: claims.Expires(), AddedAt: now},
		Token:        issued.Record,
		Rotation:     rot,
		Audit: store.AuditEntry{
			At: now, TenantID: d.TenantID, Actor: "node:" + d.NodeID, Action: "rotate", NodeID: d.NodeID, Result: "ok", Details: details,
		},
	}
}

// result is the answer to a fresh rotation once w is written.
func result(w store.RotationWrite, pre prechecked) Result {
	return Result{
		RotationID:     w.Rotation.RotationID,
		NodeID:         w.NodeID,
		Token:          pre.issued.Token,
		TokenExpires:   pre.issued.Claims.Expires(),
		NewFingerprint: w.Rotation.NewFingerprint,
		OldFingerprint: w.Rotation.OldFingerprint,
		OverlapUntil:   w.OverlapUntil,
		RotatedAt:      w.At,
	}
}

// prechecked is what precheck verified and made outside the transaction.
type prechecked struct {
	v      nodeauth.Verified
	issued tokens.Issued
}

// precheck runs the envelope checks of a stream's first envelope (under the node's
// current key and a token bound to it), the new key's checks, and issues the new
// token, all outside any transaction. Its refusal counts only when the rotation_id
// is not committed yet: a retry of a committed one carries a token blacklisted by
// now, and the transaction replays it instead.
func (s *Service) precheck(ctx context.Context, req Request, now time.Time) (prechecked, error) {
	v, err := s.cfg.Auth.CheckUnary(ctx, s.cfg.Store, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, req.Envelope)
	if err != nil {
		return prechecked{}, err
	}
	if err := s.checkNewKey(req, v.Daemon.PublicKey, now); err != nil {
		return prechecked{}, err
	}
	d := v.Daemon
	d.PublicKey = req.NewPublicKey
	issued, err := s.cfg.Issuer.Issue(d, req.NewPublicKey, now)
	if err != nil {
		return prechecked{}, err
	}
	return prechecked{v: v, issued: issued}, nil
}

// checkNewKey checks the new key and the new key's signature, against the old key
// this rotation replaces.
func (s *Service) checkNewKey(req Request, oldKey []byte, now time.Time) error {
	if len(req.NewPublicKey) != ed25519.PublicKeySize {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_KEY_INVALID, "new public key is %d bytes, want a %d-byte Ed25519 key", len(req.NewPublicKey), ed25519.PublicKeySize)
	}
	if subtle.ConstantTimeCompare(req.NewPublicKey, oldKey) == 1 {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_KEY_INVALID, "the new key is the current key: generate a new one")
	}
	msg := seal.RotateNewKeyMessage(req.RotationID, req.NodeID, oldKey, req.NewPublicKey, req.At)
	if !ed25519.Verify(req.NewPublicKey, msg, req.NewKeySignature) {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, "the new key's signature (proof of possession) does not verify")
	}
	if ahead := req.At.Sub(now); ahead > s.cfg.MaxClockSkew {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW, "rotation request is dated %s ahead of server time %s: correct the host clock or use server_time", ahead, now.Format(time.RFC3339Nano))
	}
	if age := now.Sub(req.At); age > MaxRequestAge {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW, "rotation request is %s old (at most %s): start a new rotation", age.Round(time.Second), MaxRequestAge)
	}
	return nil
}

// replay answers a request whose rotation_id is already committed. It is the same
// rotation only if it names the same node and new key, carries the new key's
// signature, and its envelope is signed by the rotation's old key with a token that
// key held; then the recorded token is returned unchanged. Nothing is written.
func (s *Service) replay(ctx context.Context, tx store.Tx, req Request, prev store.Rotation, now time.Time) (Result, error) {
	env := req.Envelope
	conflict := rejection.New(edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT, "rotation_id %s was already used for another rotation: make a new id", req.RotationID)
	if prev.NodeID != req.NodeID || prev.NewFingerprint != fingerprint.Of(req.NewPublicKey) {
		return Result{}, conflict
	}
	d, err := tx.GetDaemon(ctx, req.NodeID)
	if errors.Is(err, store.ErrNotFound) {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE, "node %s is not enrolled", req.NodeID)
	}
	if err != nil {
		return Result{}, fmt.Errorf("look up node: %w", err)
	}
	if d.Status == store.DaemonRevoked {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_REVOKED, "node %s was revoked", req.NodeID)
	}
	var oldKey []byte
	for _, k := range [][]byte{d.PublicKey, d.PreviousPublicKey} {
		if len(k) == ed25519.PublicKeySize && fingerprint.Of(k) == prev.OldFingerprint {
			oldKey = k
		}
	}
	if oldKey == nil {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT, "rotation %s was committed and the node's key has changed since: attest with the current key", req.RotationID)
	}
	// The old token was blacklisted by the rotation and may have expired since; it
	// must still be genuine, this node's, and bound to the old key.
	claims, err := s.cfg.Issuer.Verify(ctx, env.GetNodeSecurityToken(), now)
	if err != nil && !errors.Is(err, nodetoken.ErrExpired) {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_INVALID, "node token does not verify")
	}
	if claims.NodeID() != req.NodeID {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_NODE_MISMATCH, "node token was issued to another node")
	}
	if claims.Cnf.KeyFingerprint != prev.OldFingerprint {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH, "a retried rotation must carry the token of the key it rotates away from")
	}
	if err := seal.Verify(ed25519.PublicKey(oldKey), env); err != nil {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, "envelope signature does not verify under the rotated key")
	}
	if !ed25519.Verify(req.NewPublicKey, seal.RotateNewKeyMessage(req.RotationID, req.NodeID, oldKey, req.NewPublicKey, req.At), req.NewKeySignature) {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, "the new key's signature (proof of possession) does not verify")
	}
	ts := time.UnixMilli(env.GetTimestampUnixMs())
	if skew := ts.Sub(now); skew > s.cfg.MaxClockSkew || -skew > s.cfg.MaxClockSkew {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW, "envelope timestamp is %s away from server time %s: correct the host clock or use server_time", skew.Abs(), now.Format(time.RFC3339Nano))
	}
	issued, err := s.cfg.Issuer.Verify(ctx, prev.NewToken, now)
	if err != nil && !errors.Is(err, nodetoken.ErrExpired) {
		return Result{}, fmt.Errorf("recorded token of rotation %s does not verify: %w", prev.RotationID, err)
	}
	res := Result{
		RotationID:     prev.RotationID,
		NodeID:         prev.NodeID,
		Token:          prev.NewToken,
		TokenExpires:   issued.Expires(),
		NewFingerprint: prev.NewFingerprint,
		OldFingerprint: prev.OldFingerprint,
		RotatedAt:      prev.At,
		Replayed:       true,
	}
	if fingerprint.Of(d.PublicKey) == prev.NewFingerprint {
		res.OverlapUntil = d.OverlapUntil
	}
	return res, nil
}

// replayAfterRace retries the replay path in a transaction of its own; ok is false
// when there is nothing committed to replay (the refusal stands).
func (s *Service) replayAfterRace(ctx context.Context, req Request, now time.Time) (Result, bool) {
	var res Result
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		prev, err := tx.GetRotation(ctx, req.RotationID)
		if err != nil {
			return err
		}
		res, err = s.replay(ctx, tx, req, prev, now)
		return err
	})
	return res, err == nil
}
