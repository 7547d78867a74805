package nodeauth

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// maxCachedTokens bounds the per-stream cache of verified tokens: a daemon changes
// token a few times per stream (refresh, rotation), never hundreds.
const maxCachedTokens = 4

// Stream verifies the envelopes of one ConnectEdge stream. It caches what it has
// already established (each distinct token's verified claims, the node record), so
// a heartbeat costs one Ed25519 verification and map lookups. Not safe for
// concurrent use: one stream, one goroutine.
type Stream struct {
	s    *Service
	kind edgev1.EnvelopeKind
	// reader loads the node record: the Store, or the caller's transaction for a
	// unary envelope checked inside one.
	reader   store.Tx
	nodeID   string
	streamID string
	lastSeq  uint64
	// verified maps token text to its verified claims.
	verified map[string]nodetoken.Claims
	daemon   *nodeState
	// presented is the key fingerprint and token jti of the last accepted envelope.
	presentedKfp, presentedJTI string
}

// nodeState is the node record as this stream last loaded it, with the
// fingerprints of its current and previous keys.
type nodeState struct {
	d       store.Daemon
	kfp     string
	prevKfp string // "" when the node has no previous key
}

func newNodeState(d store.Daemon) *nodeState {
	n := &nodeState{d: d, kfp: fingerprint.Of(d.PublicKey)}
	if len(d.PreviousPublicKey) == ed25519.PublicKeySize {
		n.prevKfp = fingerprint.Of(d.PreviousPublicKey)
	}
	return n
}

// binding says which of the node's keys a token is bound to.
type binding int

const (
	boundNowhere binding = iota
	boundCurrent
	// boundPrevious: the key a rotation replaced, while the overlap lasts.
	boundPrevious
)

// NewStream starts verification for one stream whose envelopes are all of kind.
func (s *Service) NewStream(kind edgev1.EnvelopeKind) *Stream {
	return &Stream{s: s, kind: kind, reader: s.cfg.Store, verified: map[string]nodetoken.Claims{}}
}

// Verified is what an accepted unary envelope established.
type Verified struct {
	Daemon store.Daemon
	Claims nodetoken.Claims
}

// CheckUnary verifies one envelope of kind sent outside a stream (RotateEdgeKey,
// Logout) with every check, in the same order, that the first envelope of a stream
// gets; its stream_id is spent like a stream's. The node is read through tx, so a
// caller checking inside its transaction acts on the record it verified. Only the
// node's current key and a token bound to it are accepted: a one-envelope call
// never verified anything before, so no grace or overlap applies.
func (s *Service) CheckUnary(ctx context.Context, tx store.Tx, kind edgev1.EnvelopeKind, env *edgev1.SealNodeEnvelope) (Verified, error) {
	st := s.NewStream(kind)
	st.reader = tx
	if err := st.Check(ctx, env); err != nil {
		return Verified{}, err
	}
	return Verified{Daemon: st.daemon.d, Claims: st.verified[env.GetNodeSecurityToken()]}, nil
}

// NodeID is the node this stream is bound to (after the first accepted envelope).
func (st *Stream) NodeID() string { return st.nodeID }

// Presented is what the last accepted envelope proved: the fingerprint of the key
// that signed it and the jti of the token it carried. A fleet run learns from it
// that a host really switched to a new key or token, rather than assuming so.
func (st *Stream) Presented() (keyFingerprint, tokenJTI string) {
	return st.presentedKfp, st.presentedJTI
}

// Daemon is the node record as last loaded by the stream.
func (st *Stream) Daemon() store.Daemon {
	if st.daemon == nil {
		return store.Daemon{}
	}
	return st.daemon.d
}

// Check verifies env; a refusal is a *rejection.Error. Nothing about the stream
// changes unless env is accepted.
func (st *Stream) Check(ctx context.Context, env *edgev1.SealNodeEnvelope) error {
	err := st.check(ctx, env)
	if r, ok := rejection.As(err); ok {
		st.s.cfg.Metrics.EnvelopeRejected(reject.Short(r.Reason))
	}
	return err
}

func (st *Stream) check(ctx context.Context, env *edgev1.SealNodeEnvelope) error {
	cfg := &st.s.cfg
	now := cfg.Now()

	// 1. Shape.
	if err := seal.CheckShape(env); err != nil {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "%v", err)
	}
	if env.GetKind() != st.kind {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "envelope kind %s does not belong on this stream", env.GetKind())
	}
	if st.nodeID != "" && (env.GetNodeId() != st.nodeID || env.GetStreamId() != st.streamID) {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "node_id and stream_id must not change within a stream")
	}

	// 2. Token signature and expiry, verified once per distinct token per stream.
	token := env.GetNodeSecurityToken()
	claims, seenBefore := st.verified[token]
	if !seenBefore {
		c, err := cfg.Issuer.Verify(ctx, token, now)
		switch {
		case errors.Is(err, nodetoken.ErrExpired):
			return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_EXPIRED, "node token expired at %s: attest for a new one", c.Expires().UTC().Format(time.RFC3339))
		case err != nil:
			return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_INVALID, "node token does not verify: attest for a new one")
		}
		claims = c
	} else if !now.Before(claims.Expires()) {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_EXPIRED, "node token expired at %s: attest for a new one", claims.Expires().UTC().Format(time.RFC3339))
	}

	// 3. The token names the node that signs.
	if claims.NodeID() != env.GetNodeId() {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_NODE_MISMATCH, "node token was issued to another node")
	}

	// 4. The node exists and is not revoked. Loaded again whenever the token changes,
	// since that is when the node's key or standing may have changed, and when the
	// token was withdrawn for a reason the stream's record does not show yet (a
	// rotation or revocation committed since the record was loaded). Those are the
	// only reloads: a heartbeat under a known token costs no database read.
	entry, listed := cfg.Blacklist.Lookup(claims.JTI())
	node := st.daemon
	if node == nil || !seenBefore || (listed && !node.explains(entry, claims)) {
		d, err := st.reader.GetDaemon(ctx, env.GetNodeId())
		if errors.Is(err, store.ErrNotFound) {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE, "node %s is not enrolled", env.GetNodeId())
		}
		if err != nil {
			return fmt.Errorf("look up node: %w", err)
		}
		node = newNodeState(d)
	}
	if node.d.Status == store.DaemonRevoked {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_REVOKED, "node %s was revoked", env.GetNodeId())
	}
	if claims.TenantID != node.d.TenantID {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_INVALID, "node token names another tenant: attest for a new one")
	}

	// 5. The token is bound to the key that must sign.
	pub, bound := st.keyFor(claims, node, now)
	if bound == boundNowhere {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH, "node token is bound to a key that is not the node's current key: attest for a new one")
	}

	// 6. Blacklist (in memory). A token bound to the previous key was withdrawn by the
	// rotation that replaced the key, listed or not: only a stream that verified it
	// before keeps it, for the overlap.
	if bound == boundPrevious && !seenBefore {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED, "node token was withdrawn (%s): its key was rotated; use the new token", BlacklistReasonRotated)
	}
	if listed {
		graceful := false
		switch entry.Reason {
		case BlacklistReasonRefreshed:
			graceful = seenBefore && now.Sub(entry.AddedAt) < cfg.RefreshGrace
		case BlacklistReasonRotated:
			graceful = seenBefore && bound == boundPrevious
		}
		if !graceful {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED, "node token was withdrawn (%s): attest for a new one", entry.Reason)
		}
	}

	// 7. The envelope signature: the one Ed25519 verification per message.
	if err := seal.Verify(pub, env); err != nil {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, "envelope signature does not verify under the node's key")
	}

	// 8. Clock skew.
	ts := time.UnixMilli(env.GetTimestampUnixMs())
	if skew := ts.Sub(now); skew > cfg.MaxClockSkew || -skew > cfg.MaxClockSkew {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW, "envelope timestamp %s is %s away from server time %s (allowed %s): correct the host clock or use server_time",
			ts.UTC().Format(time.RFC3339Nano), absDur(skew), now.UTC().Format(time.RFC3339Nano), cfg.MaxClockSkew)
	}

	// 9. Sequence strictly increasing on this stream.
	if env.GetSequence() <= st.lastSeq {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_REPLAY, "sequence %d is not greater than %d already seen on this stream", env.GetSequence(), st.lastSeq)
	}

	// 10. A stream id is used by one stream only.
	if st.nodeID == "" && !st.s.streams.claim(env.GetStreamId(), now, now.Add(2*cfg.MaxClockSkew)) {
		return rejection.New(edgev1.RejectReason_REJECT_REASON_REPLAY, "stream_id was already used: start each stream with a new random stream_id")
	}

	// Accepted: remember what was established.
	st.nodeID, st.streamID = env.GetNodeId(), env.GetStreamId()
	st.lastSeq = env.GetSequence()
	st.daemon = node
	// The token is bound to the key that verified the signature (step 5).
	st.presentedKfp, st.presentedJTI = claims.Cnf.KeyFingerprint, claims.JTI()
	if !seenBefore {
		if len(st.verified) >= maxCachedTokens {
			clear(st.verified)
		}
		st.verified[token] = claims
	}
	return nil
}

// keyFor returns the public key an envelope carrying a token with claims must be
// signed with, and which of the node's keys that is: the current key when the token
// is bound to it, or the previous key when the token is bound to that and the
// rotation's overlap has not ended. Whether this stream may use the previous key is
// the blacklist step's decision, so the refusal names the withdrawn token.
func (st *Stream) keyFor(claims nodetoken.Claims, node *nodeState, now time.Time) (ed25519.PublicKey, binding) {
	switch kfp := claims.Cnf.KeyFingerprint; {
	case kfp == node.kfp && len(node.d.PublicKey) == ed25519.PublicKeySize:
		return ed25519.PublicKey(node.d.PublicKey), boundCurrent
	case kfp == node.prevKfp && node.prevKfp != "" && now.Before(node.d.OverlapUntil):
		return ed25519.PublicKey(node.d.PreviousPublicKey), boundPrevious
	}
	return nil, boundNowhere
}

// explains reports whether the node record already accounts for the blacklisting of
// a token with claims. A rotation moves the token's key out of the current slot; a
// revocation or logout marks the node revoked. If the record shows neither, it was
// loaded before that change committed and must be read again.
func (n *nodeState) explains(e store.BlacklistEntry, claims nodetoken.Claims) bool {
	switch e.Reason {
	case BlacklistReasonRotated:
		return n.kfp != claims.Cnf.KeyFingerprint
	case BlacklistReasonRevoked, BlacklistReasonLogout:
		return n.d.Status == store.DaemonRevoked
	}
	return true
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
