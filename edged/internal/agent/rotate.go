package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
)

// errLoggedOut ends serving an identity the host owner logged out of.
var errLoggedOut = errors.New("logged out")

// ErrNotServing: the daemon has no live identity to act on (not enrolled, revoked,
// or still starting).
var ErrNotServing = errors.New("edged is not serving an identity")

// newHost is the rotation.Host for the identity being served: its changes switch the
// in-memory signer and token (under tokMu) and ask the stream for a heartbeat at once.
func (a *Agent) newHost(log *slog.Logger) *rotation.Host {
	return rotation.New(rotation.Config{
		Dir:             a.cfg.Dir,
		Client:          a.client,
		Logger:          log,
		Now:             a.cfg.Now,
		ServerNow:       a.serverNow,
		LearnServerTime: a.learnServerTime,
		Rand:            a.cfg.Rand,
		RPCTimeout:      a.cfg.RPCTimeout,
		OnChange:        a.swap,
		Fault:           a.cfg.RotationFault,
	})
}

// swap makes id the identity every later envelope is signed with. Called with the
// state dir lock held, under attestMu.
func (a *Agent) swap(id rotation.Identity) {
	a.tokMu.Lock()
	keyChanged := !a.key.Equal(id.Key)
	a.key, a.token = id.Key, id.Token
	a.tokMu.Unlock()
	fp := fingerprint.Of(id.Key.Public().(ed25519.PublicKey))
	exp := rotation.TokenExpiry(id.Token)
	sctx := tokenSecurityContext(id.Token)
	a.update(func(s *Snapshot) {
		s.KeyFingerprint = fp
		s.TokenExpires = exp
		s.SecurityContext = sctx
		if keyChanged {
			s.Rotations++
		}
	})
	select {
	case a.tokenChanged <- struct{}{}:
	default:
	}
	if keyChanged && a.cadence != nil {
		a.cadence.poke() // a new key: plan its rotation afresh
	}
	a.heartbeatNow()
}

func (a *Agent) heartbeatNow() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// reconcile settles a rotation an earlier run left behind. It reports a revocation
// as ErrRevoked; an unreachable server only logs (the old key keeps serving).
func (a *Agent) reconcile(ctx context.Context, log *slog.Logger, h *rotation.Host) error {
	pending, err := rotation.Pending(a.cfg.Dir)
	if err != nil || !pending {
		return err
	}
	a.attestMu.Lock()
	defer a.attestMu.Unlock()
	rc, err := h.Reconcile(ctx)
	switch {
	case errors.Is(err, rotation.ErrRevoked):
		return err
	case err != nil:
		log.Warn("an interrupted key rotation could not be settled yet; serving with the current key", "error", err)
	case rc.Finished != nil:
		log.Info("finished an interrupted key rotation", "rotation_id", rc.Finished.RotationID, "key_fingerprint", rc.Finished.NewKeyFingerprint)
	case rc.Discarded:
		log.Info("discarded an interrupted key rotation the control plane never committed; the current key stays")
	}
	return nil
}

// RotateKeys runs the guide's five-step rotation in the daemon (for the local API
// and for a RotateKeyCommand): the live stream is kept, and the first envelope after
// the swap is a heartbeat under the new key and token.
func (a *Agent) RotateKeys(ctx context.Context, opts rotation.RotateOptions) (rotation.Result, error) {
	h := a.host.Load()
	if h == nil {
		return rotation.Result{}, a.notServing()
	}
	a.attestMu.Lock()
	defer a.attestMu.Unlock()
	start := a.cfg.Now()
	res, err := h.Rotate(ctx, opts)
	if errors.Is(err, rotation.ErrKeyChanged) {
		return res, err // nothing was tried: the scheduler plans for the new key
	}
	if err != nil {
		a.log.Warn("key rotation failed; the current key stays in use", "error", err, "fleet_run_id", opts.FleetRunID)
		return res, err
	}
	a.log.Info("key rotated without dropping the stream", "rotation_id", res.RotationID, "key_fingerprint", res.NewKeyFingerprint,
		"archived_key", res.ArchivedKey, "took", a.cfg.Now().Sub(start).Round(time.Millisecond))
	return res, nil
}

// RefreshToken re-attests with the current key, swaps the token in and sends a
// heartbeat under it at once.
func (a *Agent) RefreshToken(ctx context.Context, why string) (time.Time, error) {
	if a.host.Load() == nil {
		return time.Time{}, a.notServing()
	}
	exp, err := a.attest(ctx, a.log, why)
	if err != nil {
		return time.Time{}, rotation.Explain("token refresh", err)
	}
	a.heartbeatNow()
	return exp, nil
}

// Logout tells the control plane (best effort), removes the identity from the state
// dir and stops serving it; edged then waits for a new enrollment.
func (a *Agent) Logout(ctx context.Context) (rotation.LogoutResult, error) {
	a.attestMu.Lock()
	defer a.attestMu.Unlock()
	h := a.host.Load()
	serving := h != nil
	if !serving {
		// Revoked or idle: still tell the server if it can be reached.
		client, closeFn, err := rotation.Dial(a.cfg.Dir)
		if errors.Is(err, keystore.ErrNotEnrolled) {
			return rotation.LogoutResult{}, err
		}
		cfg := rotation.Config{Dir: a.cfg.Dir, Logger: a.log, Now: a.cfg.Now, RPCTimeout: a.cfg.RPCTimeout}
		if err == nil {
			defer closeFn()
			cfg.Client = client
		}
		h = rotation.New(cfg)
	}
	a.loggingOut.Store(serving)
	defer a.loggingOut.Store(false)
	res, err := h.Logout(ctx)
	if err != nil {
		return res, err
	}
	select {
	case a.loggedOut <- struct{}{}:
	default:
	}
	a.update(func(s *Snapshot) {
		*s = Snapshot{Status: StatusDisconnected, Streams: s.Streams, LastError: "not enrolled: run `aegis edge enroll --token T`"}
	})
	a.log.Info("logged out: the identity was removed from the state dir", "node_id", res.NodeID, "server_notified", res.ServerNotified)
	return res, nil
}

func (a *Agent) notServing() error {
	s := a.Status()
	switch {
	case !s.Enrolled:
		return fmt.Errorf("%w: this host is not enrolled: run `aegis edge enroll --token T`", keystore.ErrNotEnrolled)
	case s.Status == StatusRevoked:
		return fmt.Errorf("%w: get a new enrollment token, run `aegis edge logout`, then `aegis edge enroll --token T`", rotation.ErrRevoked)
	}
	return fmt.Errorf("%w: it is still starting; try again in a moment", ErrNotServing)
}

// handleCommand runs a server->daemon request off the stream loop, so the stream
// keeps reading (and acking) while the rotation's RPCs are in flight.
func (a *Agent) handleCommand(ctx context.Context, log *slog.Logger, cmd *edgev1.EdgeCommand) {
	switch c := cmd.GetCommand().(type) {
	case *edgev1.EdgeCommand_RefreshToken:
		go func() {
			if _, err := a.RefreshToken(ctx, "requested by the control plane: "+c.RefreshToken.GetReason()); err != nil {
				log.Warn("token refresh asked by the control plane failed", "error", errMessage(err))
			}
		}()
	case *edgev1.EdgeCommand_RotationPolicy:
		a.policyCommand(c.RotationPolicy)
	case *edgev1.EdgeCommand_RotateKey:
		opts := rotation.RotateOptions{KeepOld: c.RotateKey.GetKeepOld().AsDuration(), FleetRunID: c.RotateKey.GetFleetRunId()}
		go func() {
			if _, err := a.RotateKeys(ctx, opts); err != nil {
				log.Warn("key rotation asked by the control plane failed", "error", err, "fleet_run_id", opts.FleetRunID)
			}
		}()
	}
}

// housekeeping deletes archived keys once their retention has passed, whether or
// not anyone runs the CLI.
func (a *Agent) housekeeping(ctx context.Context) {
	h := rotation.New(rotation.Config{Dir: a.cfg.Dir, Logger: a.log, Now: a.cfg.Now})
	t := time.NewTicker(a.cfg.HousekeepInterval)
	defer t.Stop()
	for {
		if _, err := h.Housekeep(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("archive housekeeping failed; will retry", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
