package server

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/revocation"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// DefaultRewarmInterval bounds how long a replica can miss a change another made:
// a revocation or blacklisted token whose notification was lost (the replica was
// not listening, the notification was dropped) takes effect here within this long
// of its commit, plus the time to read the blacklist. The signing keys are re-read
// more often (tokens.KeyReloadEvery); a lost LISTEN connection triggers both at
// once when it is back.
const DefaultRewarmInterval = 30 * time.Second

// rewarmLoop re-reads the caches on a jittered schedule until ctx ends.
func (s *Server) rewarmLoop(ctx context.Context) {
	every := s.opts.RewarmInterval
	if every <= 0 {
		every = DefaultRewarmInterval
	}
	for {
		// Up to a quarter early, so replicas started together spread their reads.
		wait := every - mrand.N(every/4+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := s.rewarm(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("re-read the token blacklist (keeping what was cached)", "err", err)
		}
	}
}

// rewarm re-reads the blacklist and acts on what it had not heard of: a node
// revoked (or logged out) through another replica loses its stream here.
func (s *Server) rewarm(ctx context.Context) error {
	list, err := s.store.ListBlacklist(ctx, s.now())
	if err != nil {
		return fmt.Errorf("rewarm: %w", err)
	}
	s.learnBlacklisted(list, time.Time{})
	return nil
}

// learnBlacklisted adds entries committed by any replica (told by a notification
// or read back from the store) to the in-memory blacklist. An entry this replica
// had not seen that withdraws a node's tokens for good also ends the node's stream
// here, since the stream may never present the token again before it is dropped.
// committed is when the entries were committed, if the caller knows it more
// precisely than their AddedAt.
func (s *Server) learnBlacklisted(es []store.BlacklistEntry, committed time.Time) {
	var fresh []store.BlacklistEntry
	for _, e := range es {
		if _, known := s.black.Lookup(e.JTI); !known {
			fresh = append(fresh, e)
		}
	}
	s.black.Learn(es...)
	for _, e := range fresh {
		why := ""
		switch e.Reason {
		case nodeauth.BlacklistReasonRevoked:
			why = revocation.WhyRevoke
		case nodeauth.BlacklistReasonLogout:
			why = revocation.WhyLogout
		default:
			continue // rotated or refreshed: the stream moves on to the new token
		}
		at := committed
		if at.IsZero() {
			at = e.AddedAt
		}
		if s.sessions.Kick(e.NodeID, session.Kick{Reason: session.ReasonRevoked, Message: revocation.KickMessage(why), RevokedAt: at}) {
			s.log.Info("dropped the stream of a node revoked through another replica", "node", e.NodeID, "reason", e.Reason)
		}
	}
}

// keepSessionsLoop re-asserts, once per heartbeat interval, the session rows of
// the streams this replica holds, so a row cleared or overwritten while the
// stream stayed live (a delayed write of an older stream, a write lost while the
// database was unreachable, a restarted replica's cleanup) is true again within
// one heartbeat interval. A row that already says so is not written.
func (s *Server) keepSessionsLoop(ctx context.Context) {
	every := s.cfg.HeartbeatInterval
	if every <= 0 {
		every = 10 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		live := s.sessions.Live()
		if len(live) == 0 {
			continue
		}
		n, err := s.store.KeepSessions(ctx, s.replica, live)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("re-assert this replica's session rows (retrying next interval)", "err", err)
		case n > 0:
			s.log.Info("session rows put right for streams this replica holds", "rows", n)
		}
	}
}
