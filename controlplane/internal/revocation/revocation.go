// Package revocation owns ending a node's identity: an operator's revoke-remote and
// a daemon's own logout. Both are one transaction — status revoked, every unexpired
// token of the node blacklisted, an audit line — after which the node's live stream
// is told Disconnect{REVOKED} and ends, on this replica or, through the broadcast
// Bus, on whichever replica holds it. A revoked node can never
// attest, stream, rotate or enroll its key again; the host must enroll anew with a
// new key.
package revocation

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
)

// Config wires a Service.
type Config struct {
	Store     store.Store
	Auth      *nodeauth.Service
	Blacklist *tokens.Blacklist
	Sessions  *session.Registry
	// Broadcast tells the other replicas to drop the node's stream; nil means this
	// is the only replica.
	Broadcast broadcast.Bus
	Now       func() time.Time
	// Logger reports a revocation that could not be published; nil discards.
	Logger *slog.Logger
}

// Service revokes nodes. Safe for concurrent use.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// Result is a committed revocation.
type Result struct {
	Daemon store.Daemon
	// Blacklisted is how many unexpired tokens were withdrawn.
	Blacklisted int
	// StreamDropped: a live stream was told to end, on this replica or (through the
	// broadcast) on the replica the store says holds it.
	StreamDropped bool
}

// Revoke is an operator's revoke-remote. A node of a tenant p cannot see is
// store.ErrNotFound; revoking a revoked node again changes nothing and succeeds.
func (s *Service) Revoke(ctx context.Context, p apitoken.Principal, nodeID string) (Result, error) {
	if !p.CanWrite() {
		return Result{}, fmt.Errorf("%w: role %q cannot revoke hosts", apitoken.ErrPermissionDenied, p.Role)
	}
	now := s.cfg.Now().UTC()
	var res Result
	var added []store.BlacklistEntry
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		d, err := tx.GetDaemon(ctx, nodeID)
		if err == nil && !p.Sees(d.TenantID) {
			err = store.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("host %q: %w", nodeID, err)
		}
		added, err = s.revoke(ctx, tx, d, "op:"+p.TokenID, "revoke", nodeauth.BlacklistReasonRevoked, now)
		if err != nil {
			return err
		}
		if d, err = tx.GetDaemon(ctx, nodeID); err != nil {
			return fmt.Errorf("host %q: %w", nodeID, err)
		}
		res = Result{Daemon: d, Blacklisted: len(added)}
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	res.StreamDropped = s.after(ctx, res.Daemon, added, WhyRevoke)
	return res, nil
}

// LogoutRequest is a daemon's LOGOUT envelope and its decoded payload.
type LogoutRequest struct {
	Envelope *edgev1.SealNodeEnvelope
	// PayloadErr is why the payload did not decode (nil if it did).
	PayloadErr error
	NodeID     string
}

// Logout revokes the node that signs the envelope (with its current key and token,
// checked as any envelope is). Refusals are *rejection.Error.
func (s *Service) Logout(ctx context.Context, req LogoutRequest) (Result, error) {
	env := req.Envelope
	if err := seal.CheckShape(env); err != nil {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "%v", err)
	}
	if env.GetKind() != edgev1.EnvelopeKind_ENVELOPE_KIND_LOGOUT {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "envelope kind %s is not a logout", env.GetKind())
	}
	if req.PayloadErr != nil {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "payload is not a LogoutRequest")
	}
	if req.NodeID != env.GetNodeId() {
		return Result{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "the request names another node than its envelope")
	}
	now := s.cfg.Now().UTC()
	var res Result
	var added []store.BlacklistEntry
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		v, err := s.cfg.Auth.CheckUnary(ctx, tx, edgev1.EnvelopeKind_ENVELOPE_KIND_LOGOUT, env)
		if err != nil {
			return err
		}
		added, err = s.revoke(ctx, tx, v.Daemon, "node:"+v.Daemon.NodeID, "logout", nodeauth.BlacklistReasonLogout, now)
		if err != nil {
			return err
		}
		res = Result{Daemon: v.Daemon, Blacklisted: len(added)}
		res.Daemon.Status = store.DaemonRevoked
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	res.StreamDropped = s.after(ctx, res.Daemon, added, WhyLogout)
	return res, nil
}

// revoke marks d revoked, blacklists its unexpired tokens with reason and audits
// action, inside tx. It returns the entries to add to the in-memory blacklist after
// commit.
func (s *Service) revoke(ctx context.Context, tx store.Tx, d store.Daemon, actor, action, reason string, now time.Time) ([]store.BlacklistEntry, error) {
	wasRevoked := d.Status == store.DaemonRevoked
	if err := tx.RevokeDaemon(ctx, d.NodeID, now); err != nil {
		return nil, fmt.Errorf("revoke daemon: %w", err)
	}
	active, err := tx.ActiveNodeTokens(ctx, d.NodeID, now)
	if err != nil {
		return nil, fmt.Errorf("list active tokens: %w", err)
	}
	added := make([]store.BlacklistEntry, 0, len(active))
	for _, t := range active {
		e := store.BlacklistEntry{JTI: t.JTI, NodeID: d.NodeID, Reason: reason, ExpiresAt: t.ExpiresAt, AddedAt: now}
		if err := tx.BlacklistToken(ctx, e); err != nil {
			return nil, fmt.Errorf("blacklist token: %w", err)
		}
		added = append(added, e)
	}
	details := map[string]string{"blacklisted_tokens": fmt.Sprint(len(added))}
	if wasRevoked {
		details["already_revoked"] = "true"
	}
	if _, err := tx.AppendAudit(ctx, store.AuditEntry{
		At: now, TenantID: d.TenantID, Actor: actor, Action: action, NodeID: d.NodeID, Result: "ok", Details: details,
	}); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return added, nil
}

// Why a node was revoked, as carried to other replicas.
const (
	WhyRevoke = "revoke"
	WhyLogout = "logout"
)

// KickMessage is what the node's stream is told when it is dropped for why.
func KickMessage(why string) string {
	if why == WhyLogout {
		return "this host logged out"
	}
	return "this host was revoked by an operator: enroll again with a new enrollment token"
}

// after makes a committed revocation take effect: the in-memory blacklist first (so
// no envelope slips through between the two; Add also publishes it), then the
// stream, here and on whichever other replica holds it. It reports whether a stream
// was told to end.
func (s *Service) after(ctx context.Context, d store.Daemon, added []store.BlacklistEntry, why string) bool {
	s.cfg.Blacklist.Add(added...)
	dropped := s.cfg.Sessions.Kick(d.NodeID, session.Kick{Reason: session.ReasonRevoked, Message: KickMessage(why), RevokedAt: s.cfg.Now()})
	if s.cfg.Broadcast == nil || !s.cfg.Broadcast.Shared() {
		return dropped
	}
	err := s.cfg.Broadcast.Publish(ctx, broadcast.Event{Kind: broadcast.KindRevoked, NodeID: d.NodeID, Why: why, At: s.cfg.Now().UTC()})
	if err != nil {
		// Committed already: the other replica refuses the stream's next envelope
		// once its blacklist has the tokens (it warms again after a lost LISTEN).
		if s.cfg.Logger != nil {
			s.cfg.Logger.Warn("revocation not broadcast to the other replicas", "node", d.NodeID, "err", err)
		}
		return dropped
	}
	return dropped || d.SessionID != ""
}
