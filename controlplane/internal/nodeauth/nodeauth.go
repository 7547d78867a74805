// Package nodeauth owns how the control plane decides to trust a daemon after
// enrollment: attestation (proof of possession of the node's current key against a
// nonce, answered with a fresh token that supersedes the node's others) and the
// per-stream verification of every SealNodeEnvelope, with a typed reason for each
// refusal. The checks run in a fixed order so that a daemon always learns the most
// fundamental thing wrong with its request.
package nodeauth

import (
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/internal/challenge"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/ratelimit"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
)

// Why a token was blacklisted (token_blacklist.reason). The verifier treats them
// differently: a refreshed token keeps a short grace on streams that already used
// it, a rotated one keeps the rotation's overlap on such streams, and the others
// none at all.
const (
	// BlacklistReasonRefreshed marks tokens superseded by an attestation.
	BlacklistReasonRefreshed = "refreshed"
	// BlacklistReasonRotated marks the token a key rotation replaced.
	BlacklistReasonRotated = "rotated"
	// BlacklistReasonRevoked marks the tokens of a node an operator revoked.
	BlacklistReasonRevoked = "revoked"
	// BlacklistReasonLogout marks the tokens of a node that logged out.
	BlacklistReasonLogout = "logout"
)

// DefaultRefreshGrace is how long a stream may keep using a token it had already
// verified after an attestation blacklisted it, so that a daemon refreshing its
// token mid-stream loses no envelope between the refresh and its next message.
const DefaultRefreshGrace = 60 * time.Second

// Config wires a Service.
type Config struct {
	Store        store.Store
	Issuer       *tokens.Issuer
	Blacklist    *tokens.Blacklist
	Now          func() time.Time
	MaxClockSkew time.Duration
	// RefreshGrace: 0 means DefaultRefreshGrace.
	RefreshGrace time.Duration
	// AttestLimiter limits attestations per node; nil means unlimited.
	AttestLimiter *ratelimit.Limiter
	Metrics       *metrics.Metrics
}

// Service attests nodes and verifies envelopes. Safe for concurrent use.
type Service struct {
	cfg     Config
	streams *seenStreams
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.RefreshGrace == 0 {
		cfg.RefreshGrace = DefaultRefreshGrace
	}
	return &Service{cfg: cfg, streams: &seenStreams{ids: map[string]time.Time{}}}
}

// AttestRequest is a node proving possession of its key.
type AttestRequest struct {
	NodeID    string
	PublicKey []byte
	Nonce     string
	Signature []byte
}

// AttestResult is a successful attestation.
type AttestResult struct {
	Daemon store.Daemon
	Tenant store.Tenant
	Token  tokens.Issued
}

// Attest issues a fresh token to a node that signs seal.AttestMessage with its current
// key, and blacklists the node's other active tokens, in one transaction.
func (s *Service) Attest(ctx context.Context, req AttestRequest) (AttestResult, error) {
	res, err := s.attest(ctx, req)
	result := "ok"
	if err != nil {
		result = "error"
		if r, ok := rejection.As(err); ok {
			result = reject.Short(r.Reason)
		}
	}
	s.cfg.Metrics.Attestation(result)
	return res, err
}

func (s *Service) attest(ctx context.Context, req AttestRequest) (AttestResult, error) {
	now := s.cfg.Now().UTC()
	if !challenge.NodeIDPattern.MatchString(req.NodeID) {
		return AttestResult{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "node_id must be n-<12 hex>")
	}
	if ok, wait := s.cfg.AttestLimiter.Take(req.NodeID, now); !ok {
		return AttestResult{}, rejection.Retry(edgev1.RejectReason_REJECT_REASON_RATE_LIMITED, wait,
			"too many attestations for this node: retry in %s", wait.Round(time.Millisecond))
	}
	// The nonce is spent in a transaction of its own, committed whatever the proof
	// turns out to be: inside the attestation's transaction a refusal would roll the
	// spending back, and one challenge would buy any number of guesses.
	if err := challenge.Consume(ctx, s.cfg.Store, req.Nonce, challenge.PurposeAttest, req.NodeID, now); err != nil {
		return AttestResult{}, err
	}
	var res AttestResult
	var added []store.BlacklistEntry
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		added = added[:0]
		d, err := tx.GetDaemon(ctx, req.NodeID)
		if errors.Is(err, store.ErrNotFound) {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE, "node %s is not enrolled: enroll again with a new enrollment token", req.NodeID)
		}
		if err != nil {
			return fmt.Errorf("look up node: %w", err)
		}
		if d.Status == store.DaemonRevoked {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_REVOKED, "node %s was revoked: enroll again with a new enrollment token", req.NodeID)
		}
		if len(req.PublicKey) != ed25519.PublicKeySize {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_KEY_INVALID, "public key is %d bytes, want %d", len(req.PublicKey), ed25519.PublicKeySize)
		}
		if !ed25519.Verify(req.PublicKey, seal.AttestMessage(req.Nonce, req.NodeID, req.PublicKey), req.Signature) {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, "attestation signature does not verify under the presented key")
		}
		// The key proved possession of itself; now it must be the key the node holds.
		// After a rotation that is the new key: the previous one, even inside the
		// overlap, earns nothing (only streams that already verified it may use it).
		if subtle.ConstantTimeCompare(req.PublicKey, d.PublicKey) != 1 {
			return rejection.New(edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH, "the presented key is not node %s's current key", req.NodeID)
		}
		issued, err := s.cfg.Issuer.Issue(d, d.PublicKey, now)
		if err != nil {
			return err
		}
		active, err := tx.ActiveNodeTokens(ctx, d.NodeID, now)
		if err != nil {
			return fmt.Errorf("list active tokens: %w", err)
		}
		if err := tx.InsertNodeToken(ctx, issued.Record); err != nil {
			return fmt.Errorf("record node token: %w", err)
		}
		for _, t := range active {
			// Only tokens of the key just proven are superseded. A token bound to
			// another key is either useless already (keyFor refuses it) or a
			// rotation's fresh one committed after this transaction read the node
			// (READ COMMITTED): blacklisting it would strand the rotated daemon.
			if t.JTI == issued.Record.JTI || t.KeyFingerprint != issued.Record.KeyFingerprint {
				continue
			}
			e := store.BlacklistEntry{JTI: t.JTI, NodeID: d.NodeID, Reason: BlacklistReasonRefreshed, ExpiresAt: t.ExpiresAt, AddedAt: now}
			if err := tx.BlacklistToken(ctx, e); err != nil {
				return fmt.Errorf("blacklist superseded token: %w", err)
			}
			added = append(added, e)
		}
		tenant, err := tx.GetTenant(ctx, d.TenantID)
		if err != nil {
			return fmt.Errorf("tenant of node: %w", err)
		}
		if _, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: d.TenantID, Actor: "node:" + d.NodeID, Action: "attest", NodeID: d.NodeID, Result: "ok",
			Details: map[string]string{"superseded_tokens": fmt.Sprint(len(added))},
		}); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		res = AttestResult{Daemon: d, Tenant: tenant, Token: issued}
		return nil
	})
	if err != nil {
		return AttestResult{}, err
	}
	s.cfg.Blacklist.Add(added...)
	if len(added) > 0 {
		s.cfg.Metrics.TokenRefreshed()
	}
	return res, nil
}

// Purge forgets stream ids too old to be replayed past the clock-skew check.
func (s *Service) Purge(now time.Time) { s.streams.purge(now) }

// seenStreams remembers every stream id accepted recently. An envelope can pass the
// skew check for at most 2×MaxClockSkew after its first acceptance, so an id is kept
// that long; after that a replay fails CLOCK_SKEW anyway. Per replica for now: a
// replay on another replica is caught once stream ids are shared through the store.
type seenStreams struct {
	mu  sync.Mutex
	ids map[string]time.Time // stream id -> forget after
}

// claim records id; false if it was already seen and not yet forgotten.
func (ss *seenStreams) claim(id string, now, forgetAt time.Time) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if until, ok := ss.ids[id]; ok && now.Before(until) {
		return false
	}
	ss.ids[id] = forgetAt
	return true
}

func (ss *seenStreams) purge(now time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for id, until := range ss.ids {
		if !now.Before(until) {
			delete(ss.ids, id)
		}
	}
}
