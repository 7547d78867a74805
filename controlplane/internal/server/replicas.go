package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/revocation"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// openBus is how this replica hears of the others: nobody to hear with SQLite (one
// process), LISTEN/NOTIFY with PostgreSQL.
func openBus(ctx context.Context, cfg config.Config, replica string, log *slog.Logger) (broadcast.Bus, error) {
	if cfg.DatabaseKind != config.DatabasePostgres {
		return broadcast.Local{}, nil
	}
	b, err := broadcast.OpenPostgres(ctx, cfg.DatabaseURL, replica, log)
	if err != nil {
		return nil, fmt.Errorf("replica notifications: %w", err)
	}
	return b, nil
}

// sendCommand queues c for the node's stream on this replica or, when another
// replica holds it (as the store says), publishes it for that one.
func (s *Server) sendCommand(ctx context.Context, nodeID string, c session.Command) error {
	err := s.sessions.Send(nodeID, c)
	if !errors.Is(err, session.ErrNoStream) || !s.bus.Shared() {
		return err
	}
	d, gerr := s.store.GetDaemon(ctx, nodeID)
	if gerr != nil || d.SessionID == "" || d.SessionReplica == s.replica {
		return err
	}
	bc := &broadcast.Command{Kind: c.Kind.String(), Reason: c.Reason, FleetRunID: c.FleetRunID, KeepOld: c.KeepOld, CommandID: c.CommandID, MaxKeyAge: c.MaxKeyAge}
	if v := c.Invoke; v != nil {
		bc.Invoke = &broadcast.Invocation{Tool: v.Tool, Command: v.Command, Args: v.Args, Cwd: v.Cwd, Env: v.Env,
			Deadline: v.Deadline, SecurityContext: v.SecurityContext}
	}
	return s.bus.Publish(ctx, broadcast.Event{Kind: broadcast.KindCommand, NodeID: nodeID, At: s.now().UTC(), Command: bc})
}

// replicaEvents acts on the other replicas' events on this one.
type replicaEvents struct{ s *Server }

func (r replicaEvents) Handle(ctx context.Context, e broadcast.Event) {
	s := r.s
	switch e.Kind {
	case broadcast.KindBlacklisted:
		es := make([]store.BlacklistEntry, len(e.Tokens))
		for i, t := range e.Tokens {
			es[i] = store.BlacklistEntry{JTI: t.JTI, NodeID: t.NodeID, Reason: t.Reason, ExpiresAt: time.Unix(t.ExpiresAt, 0).UTC(), AddedAt: time.Unix(t.AddedAt, 0).UTC()}
		}
		// The trigger's "a" is the committing transaction's now(), with
		// microseconds: the start of the revocation's propagation.
		s.learnBlacklisted(es, e.At)
	case broadcast.KindRevoked:
		if s.sessions.Kick(e.NodeID, session.Kick{Reason: session.ReasonRevoked, Message: revocation.KickMessage(e.Why), RevokedAt: e.At}) {
			s.log.Info("dropped the stream of a node revoked through another replica", "node", e.NodeID, "origin", e.Origin)
		}
	case broadcast.KindTool:
		if e.Tool != nil {
			s.toolParts.deliver(s, e.NodeID, *e.Tool)
		}
	case broadcast.KindPresented:
		if e.Presented != nil && e.NodeID != "" {
			s.presence.Learn(e.NodeID, session.Credentials{KeyFingerprint: e.Presented.KeyFingerprint, TokenJTI: e.Presented.TokenJTI})
		}
	case broadcast.KindCommand:
		if e.Command == nil {
			return
		}
		c := session.Command{Reason: e.Command.Reason, FleetRunID: e.Command.FleetRunID, KeepOld: e.Command.KeepOld, CommandID: e.Command.CommandID, MaxKeyAge: e.Command.MaxKeyAge}
		switch e.Command.Kind {
		case session.CommandRotationPolicy.String():
			c.Kind = session.CommandRotationPolicy
		case session.CommandRefreshToken.String():
			c.Kind = session.CommandRefreshToken
		case session.CommandRotateKey.String():
			c.Kind = session.CommandRotateKey
		case session.CommandCancelTool.String():
			c.Kind = session.CommandCancelTool
		case session.CommandQueryTool.String():
			c.Kind = session.CommandQueryTool
		case session.CommandInvokeTool.String():
			v := e.Command.Invoke
			if v == nil {
				return
			}
			c.Kind = session.CommandInvokeTool
			c.Invoke = &session.Invocation{Tool: v.Tool, Command: v.Command, Args: v.Args, Cwd: v.Cwd, Env: v.Env,
				Deadline: v.Deadline, SecurityContext: v.SecurityContext}
		default:
			s.log.Warn("ignoring an unknown command from another replica", "kind", e.Command.Kind, "origin", e.Origin)
			return
		}
		// The replica holding no stream for the node ignores it.
		if err := s.sessions.Send(e.NodeID, c); err != nil && !errors.Is(err, session.ErrNoStream) {
			s.log.Warn("command from another replica not delivered", "node", e.NodeID, "kind", e.Command.Kind, "err", err)
		}
	}
}

// Resync re-reads what this replica caches after notifications may have been
// missed (the LISTEN connection was lost and is back).
func (r replicaEvents) Resync(ctx context.Context) error {
	r.s.reloadSigningKeys(ctx)
	return r.s.rewarm(ctx)
}

// announceBlacklisted tells the other replicas of the routine entries this replica
// has just committed: a token superseded by an attestation or a rotation. It returns
// once the announcement is committed, so a rotation or attestation answers its
// daemon only after the other replicas can know. Revocations and logouts are not
// announced here: their own transaction notifies them (migration 0009), so they
// reach every replica even if this one dies right after the commit. A routine
// announcement lost that way heals at the others' next blacklist re-read.
func (s *Server) announceBlacklisted(es []store.BlacklistEntry) {
	var toks []broadcast.Token
	for _, e := range es {
		if e.Reason == nodeauth.BlacklistReasonRevoked || e.Reason == nodeauth.BlacklistReasonLogout {
			continue
		}
		toks = append(toks, broadcast.Token{JTI: e.JTI, NodeID: e.NodeID, Reason: e.Reason, ExpiresAt: e.ExpiresAt.Unix(), AddedAt: e.AddedAt.Unix()})
	}
	if len(toks) == 0 {
		return
	}
	err := s.bus.Publish(context.Background(), broadcast.Event{Kind: broadcast.KindBlacklisted, At: s.now().UTC(), Tokens: toks})
	if err != nil {
		s.log.Warn("superseded tokens not announced to the other replicas; they learn them at their next re-read",
			"tokens", len(toks), "err", err)
	}
}

// publishPresented tells the other replicas what a stream here has just proved (the
// Presence hook), so a fleet run driven by any of them sees the host's new key and
// token as verified by this replica, which holds the stream.
func (s *Server) publishPresented(nodeID string, c session.Credentials) {
	err := s.bus.Publish(context.Background(), broadcast.Event{Kind: broadcast.KindPresented, NodeID: nodeID, At: s.now().UTC(),
		Presented: &broadcast.Presented{KeyFingerprint: c.KeyFingerprint, TokenJTI: c.TokenJTI}})
	if err != nil {
		// A fleet run elsewhere then waits out its deadline for this host and
		// reports it; the host itself is fine.
		s.log.Warn("stream credentials not broadcast to the other replicas", "node", nodeID, "err", err)
	}
}

// clusterStreams is the fleet engine's view of every replica's streams: this
// replica's registry first, then the session rows the others keep.
type clusterStreams struct{ s *Server }

// Get reports whether the node has a live stream on any replica. The handle is
// nil for a stream another replica holds: the engine only asks whether there is
// one.
func (c clusterStreams) Get(nodeID string) (*session.Handle, bool) {
	s := c.s
	if h, ok := s.sessions.Get(nodeID); ok {
		return h, true
	}
	if !s.bus.Shared() {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := s.store.GetDaemon(ctx, nodeID)
	if err != nil || d.SessionID == "" || d.SessionReplica == s.replica || d.Status == store.DaemonRevoked {
		return nil, false
	}
	// A row left by a replica killed outright names a stream that is gone: only
	// one seen within three heartbeats (the hosts list's rule) counts as live.
	return nil, s.now().Sub(d.LastSeenAt) <= 3*s.cfg.HeartbeatInterval
}

// Send queues c for the node's stream wherever it is.
func (c clusterStreams) Send(nodeID string, cmd session.Command) error {
	return c.s.sendCommand(context.Background(), nodeID, cmd)
}
