package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/config"
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

// publishBlacklisted tells the other replicas of tokens this one has just
// blacklisted (the Blacklist's OnAdd hook, after commit).
func (s *Server) publishBlacklisted(es []store.BlacklistEntry) {
	if !s.bus.Shared() {
		return
	}
	toks := make([]broadcast.Token, len(es))
	for i, e := range es {
		toks[i] = broadcast.Token{JTI: e.JTI, NodeID: e.NodeID, Reason: e.Reason, ExpiresAt: e.ExpiresAt.Unix(), AddedAt: e.AddedAt.Unix()}
	}
	err := s.bus.Publish(context.Background(), broadcast.Event{Kind: broadcast.KindBlacklisted, Tokens: toks, At: s.now().UTC()})
	if err != nil {
		// Committed: the others still refuse the token on a new stream's attestation
		// check against the store, and learn it at their next resync.
		s.log.Warn("blacklisted tokens not broadcast to the other replicas", "tokens", len(es), "err", err)
	}
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
	return s.bus.Publish(ctx, broadcast.Event{Kind: broadcast.KindCommand, NodeID: nodeID, At: s.now().UTC(), Command: &broadcast.Command{
		Kind: c.Kind.String(), Reason: c.Reason, FleetRunID: c.FleetRunID, KeepOld: c.KeepOld, MaxKeyAge: c.MaxKeyAge,
	}})
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
		s.black.Learn(es...)
	case broadcast.KindRevoked:
		if s.sessions.Kick(e.NodeID, session.Kick{Reason: session.ReasonRevoked, Message: revocation.KickMessage(e.Why)}) {
			s.log.Info("dropped the stream of a node revoked through another replica", "node", e.NodeID, "origin", e.Origin)
		}
	case broadcast.KindCommand:
		if e.Command == nil {
			return
		}
		c := session.Command{Reason: e.Command.Reason, FleetRunID: e.Command.FleetRunID, KeepOld: e.Command.KeepOld, MaxKeyAge: e.Command.MaxKeyAge}
		switch e.Command.Kind {
		case session.CommandRotationPolicy.String():
			c.Kind = session.CommandRotationPolicy
		case session.CommandRefreshToken.String():
			c.Kind = session.CommandRefreshToken
		case session.CommandRotateKey.String():
			c.Kind = session.CommandRotateKey
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

// Resync warms the blacklist again after notifications may have been missed.
func (r replicaEvents) Resync(ctx context.Context) error {
	return r.s.black.Warm(ctx, r.s.store, r.s.now())
}
