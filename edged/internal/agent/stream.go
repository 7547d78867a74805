package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
)

// disconnectError is a Disconnect the server sent before closing the stream.
type disconnectError struct {
	reason edgev1.DisconnectReason
	after  time.Duration
	msg    string
}

func (e *disconnectError) Error() string {
	return fmt.Sprintf("control plane closed the stream: %s %s", e.reason, e.msg)
}

// revokedSignal ends a session because the refresher learned the identity is gone.
type revokedSignal struct{ reason string }

func (e *revokedSignal) Error() string { return "identity revoked: " + e.reason }
func (e *revokedSignal) Unwrap() error { return ErrRevoked }

// errStale: the server stopped answering on a stream that still looks open.
var errStale = errors.New("no reply from the control plane for 3 heartbeat intervals")

// serve runs one identity until ctx ends or the identity is revoked (ErrRevoked).
func (a *Agent) serve(ctx context.Context, id *keystore.Identity) error {
	hc := a.cfg.HTTPClient(id)
	defer hc.CloseIdleConnections()
	a.client = cpclient.NewClusterClient(hc, id.Node.ServerURL, a.cfg.ClientOptions...)
	exp := a.load(id)
	log := a.log.With("node_id", id.Node.NodeID)
	log.Info("identity loaded", "server", id.Node.ServerURL, "key_fingerprint", fingerprint.Of(id.Key.Public().(ed25519.PublicKey)), "token_expires", exp)
	host := a.newHost(log)
	a.host.Store(host)
	defer a.host.Store(nil)

	// Tool calls live as long as the identity is served: reconnects do not touch
	// them; shutdown, logout and revocation kill them.
	a.calls = newCalls(a.cfg, log, func(running, pending int) {
		a.update(func(s *Snapshot) { s.ToolCalls, s.PendingResults = running, pending })
	})
	callsCtx, stopCalls := context.WithCancelCause(context.WithoutCancel(ctx))
	defer func() {
		stopCalls(errors.New("edged stopped serving this identity"))
		a.calls.stopAll(errors.New("edged stopped serving this identity"))
	}()

	rctx, stopRefresher := context.WithCancel(ctx)
	refresherDone := make(chan struct{})
	defer func() {
		stopRefresher()
		<-refresherDone
	}()
	go func() {
		defer close(refresherDone)
		a.refresher(rctx, log)
	}()

	return a.reconnect(ctx, callsCtx, log, host, !exp.IsZero() && !a.serverNow().Before(exp))
}

// reconnect keeps one stream up for the identity: an attempt, then the wait the
// server asked for or the backoff, until serving ends, the identity is revoked or
// logged out of.
func (a *Agent) reconnect(ctx, callsCtx context.Context, log *slog.Logger, host *rotation.Host, needAttest bool) error {
	attempt := 0
	// toldLater: the last attempt ended with the server asking us to come back later
	// (logged once at info, then quietly until a stream is welcomed again).
	toldLater := false
	// hinted is the last "come back in" the server gave (0 once a stream is welcomed):
	// if, back then, nothing listens, the retries spread from it (afterUnansweredHint).
	hinted := time.Duration(0)
	for {
		// A rotation an earlier run (or a failed step) left behind is settled first,
		// so the stream opens with the key the server holds.
		if rerr := a.reconcile(ctx, log, host); rerr != nil {
			return a.markRevoked(ctx, log, "revoked")
		}
		welcomed, err := a.attempt(ctx, callsCtx, log, &needAttest)
		if ctx.Err() != nil {
			return nil
		}
		e := a.endingOf(err)
		needAttest = needAttest || e.reattest
		if errors.Is(err, errLoggedOut) {
			return err
		}
		if e.revoked != "" {
			return a.markRevoked(ctx, log, e.revoked)
		}
		if welcomed {
			attempt = 0
			toldLater = false
			hinted = 0
		}
		if e.asked > 0 {
			hinted = e.asked
		}
		delay := e.delay
		if delay < 0 {
			if hinted > 0 && nothingListened(err) {
				delay = a.afterUnansweredHint(hinted, attempt)
			} else {
				delay = a.backoff(attempt)
			}
			attempt++
		}
		toldLater = a.streamEnded(log, err, e.later, delay, toldLater, needAttest)
		select {
		case <-ctx.Done():
			return nil
		case r := <-a.revoked:
			return a.markRevoked(ctx, log, r)
		case <-a.loggedOut:
			return errLoggedOut
		case <-time.After(delay):
		}
	}
}

// attempt is one try at a stream: an attestation first when the token has expired
// or the server asked for one, then a session (session.go).
func (a *Agent) attempt(ctx, callsCtx context.Context, log *slog.Logger, needAttest *bool) (welcomed bool, err error) {
	a.tokMu.Lock()
	*needAttest = *needAttest || (!a.tokenExpiry().IsZero() && !a.serverNow().Before(a.tokenExpiry()))
	a.tokMu.Unlock()
	if *needAttest {
		if _, err := a.attest(ctx, log, "token expired or refused"); err != nil {
			return false, err
		}
		*needAttest = false
	}
	a.update(func(s *Snapshot) { s.Status = StatusConnecting })
	return a.session(ctx, callsCtx, log)
}

// ending is how one attempt ended, as reconnect acts on it.
type ending struct {
	revoked  string        // the identity is gone, for this reason ("" if not)
	reattest bool          // attest before the next stream
	delay    time.Duration // the wait the server asked for, or -1: the backoff decides
	asked    time.Duration // what the server asked for, before the jitter on top (0: nothing)
	later    string        // why the server asked us to come back later ("" if it did not)
}

// endingOf reads an attempt's error: a Disconnect and its reconnect_after, the
// refresher's revocation, or a typed refusal and its retry_after.
func (a *Agent) endingOf(err error) ending {
	e := ending{delay: -1}
	var disc *disconnectError
	var sig *revokedSignal
	switch {
	case errors.As(err, &disc):
		switch disc.reason {
		case edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED:
			e.revoked = "revoked"
		case edgev1.DisconnectReason_DISCONNECT_REASON_REATTEST:
			e.reattest = true
		}
		if disc.after > 0 {
			e.asked = disc.after
			e.delay = a.serverDelay(disc.after)
			e.later = "disconnect: " + strings.ToLower(strings.TrimPrefix(disc.reason.String(), "DISCONNECT_REASON_"))
		}
	case errors.As(err, &sig):
		e.revoked = sig.reason
	default:
		r, ok := reject.From(err)
		if !ok {
			return e
		}
		a.learnServerTime(r.GetServerTime().AsTime())
		switch {
		case reject.IsTerminal(r.GetReason()):
			e.revoked = reject.Short(r.GetReason())
		case reject.NeedsAttest(r.GetReason()):
			e.reattest = true
		}
		if ra := reject.RetryAfter(err); ra > 0 {
			// busy (stream admission) or rate_limited (an attestation): the
			// server named our slot; the backoff does not grow.
			e.asked = ra
			e.delay = a.serverDelay(ra)
			e.later = reject.Short(r.GetReason())
		}
	}
	return e
}

// streamEnded shows the stream as down and says when it comes back: a server-led
// delay once at info (then at debug), anything else as a warning. It returns
// toldLater for the next attempt.
func (a *Agent) streamEnded(log *slog.Logger, err error, later string, delay time.Duration, toldLater, needAttest bool) bool {
	msg := errMessage(err)
	a.update(func(s *Snapshot) {
		s.Status = StatusDisconnected
		s.SessionID = ""
		s.ConnectedSince = time.Time{}
		s.LastError = msg
	})
	retryAt := a.cfg.Now().Add(delay).UTC().Truncate(time.Millisecond)
	switch {
	case later != "" && !toldLater:
		// What the server leads (a restart, a storm being admitted) is not an
		// error: one line saying when we come back.
		log.Info("the control plane asked this daemon to come back later", "why", later, "retry_in", delay.Round(time.Millisecond), "retry_at", retryAt)
		return true
	case later != "":
		log.Debug("the control plane asked this daemon to come back later", "why", later, "retry_in", delay.Round(time.Millisecond), "retry_at", retryAt)
		return true
	default:
		log.Warn("stream to the control plane ended; reconnecting", "error", msg, "retry_in", delay.Round(time.Millisecond), "reattest", needAttest)
		return false
	}
}

// load makes id the identity being served: the signer and token every envelope
// is authenticated with, fresh refresher channels, and a snapshot that shows it.
func (a *Agent) load(id *keystore.Identity) (tokenExpires time.Time) {
	a.tokMu.Lock()
	a.nodeID, a.key, a.token = id.Node.NodeID, id.Key, id.Token
	a.tokMu.Unlock()
	a.tokenChanged = make(chan struct{}, 1)
	a.revoked = make(chan string, 1)
	_, exp, _ := tokenTimes(id.Token)
	a.update(func(s *Snapshot) {
		*s = Snapshot{
			Enrolled:        true,
			NodeID:          id.Node.NodeID,
			Tenant:          id.Node.Tenant,
			Status:          StatusConnecting,
			KeyFingerprint:  fingerprint.Of(id.Key.Public().(ed25519.PublicKey)),
			TokenExpires:    exp,
			ServerURL:       id.Node.ServerURL,
			Streams:         s.Streams,
			SecurityContext: tokenSecurityContext(id.Token),
		}
	})
	return exp
}

// errMessage is an error as an operator reads it: the Connect message without the
// wire noise. Errors here never contain a token or key.
func errMessage(err error) string {
	if err == nil {
		return ""
	}
	if r, ok := reject.From(err); ok {
		return reject.Short(r.GetReason()) + ": " + r.GetMessage()
	}
	return err.Error()
}

// markRevoked persists the revocation so a restarted edged (and `status`) still knows.
func (a *Agent) markRevoked(ctx context.Context, log *slog.Logger, reason string) error {
	if a.loggingOut.Load() {
		// The server kicked us because we logged out: no marker, no Revoked status.
		return errLoggedOut
	}
	a.tokMu.Lock()
	nodeID := a.nodeID
	a.tokMu.Unlock()
	unlock, err := a.cfg.Dir.Lock(context.WithoutCancel(ctx))
	if err == nil {
		// Only for the identity still on disk: after a logout (or a new enrollment)
		// a late refusal of the old identity must leave no marker.
		node, nerr := a.cfg.Dir.ReadNode()
		if nerr != nil || node.NodeID != nodeID {
			unlock()
			log.Info("the control plane refused an identity that is no longer in the state dir", "reason", reason)
			return errLoggedOut
		}
		err = a.cfg.Dir.WriteRevoked(keystore.Revocation{NodeID: nodeID, Reason: reason, At: a.cfg.Now().UTC()})
		unlock()
	}
	if err != nil {
		log.Error("could not record the revocation in the state dir", "error", err)
	}
	a.update(func(s *Snapshot) {
		s.Status = StatusRevoked
		s.SessionID = ""
		s.ConnectedSince = time.Time{}
		s.LastError = "revoked (" + reason + "): get a new enrollment token, run `aegis edge logout`, then `aegis edge enroll --token T`"
	})
	return fmt.Errorf("%w: %s", ErrRevoked, reason)
}

// attest proves possession of the node key for a fresh token, writes it atomically
// under the state lock and switches the in-memory token: a live stream carries the new
// token from its next envelope on.
func (a *Agent) attest(ctx context.Context, log *slog.Logger, why string) (time.Time, error) {
	a.attestMu.Lock()
	defer a.attestMu.Unlock()
	nodeID, key := a.holdEnvelopes()
	defer a.releaseEnvelopes()
	res, err := rotation.Attest(ctx, a.client, nodeID, key, a.cfg.RPCTimeout, a.learnServerTime)
	if err != nil {
		return time.Time{}, err
	}
	// The server has already blacklisted the old token, so the new one is used in
	// memory even if writing it fails; a restart would then re-attest.
	a.tokMu.Lock()
	a.token = res.Token
	a.tokMu.Unlock()
	unlock, lerr := a.cfg.Dir.Lock(ctx)
	if lerr == nil {
		lerr = a.cfg.Dir.WriteToken(res.Token)
		unlock()
	}
	if lerr != nil {
		log.Error("new node token is in use but could not be saved; a restart will re-attest", "error", lerr)
	}
	sctx := tokenSecurityContext(res.Token)
	a.update(func(s *Snapshot) { s.TokenExpires, s.SecurityContext = res.Expires, sctx })
	select {
	case a.tokenChanged <- struct{}{}:
	default:
	}
	log.Info("node token refreshed", "why", why, "token_expires", res.Expires)
	return res.Expires, nil
}

// holdEnvelopes starts an attestation: until releaseEnvelopes, the stream's sender
// waits (on a channel, holding no lock) rather than authenticate an envelope with
// the token being replaced, which the server blacklists the moment it answers. It
// returns what the attestation signs with. Callers hold attestMu.
func (a *Agent) holdEnvelopes() (nodeID string, key ed25519.PrivateKey) {
	a.tokMu.Lock()
	defer a.tokMu.Unlock()
	a.attesting = make(chan struct{})
	return a.nodeID, a.key
}

// releaseEnvelopes ends what holdEnvelopes started, the new token (if any) in place.
func (a *Agent) releaseEnvelopes() {
	a.tokMu.Lock()
	gate := a.attesting
	a.attesting = nil
	a.tokMu.Unlock()
	close(gate)
}

// tokenExpiry of the in-memory token. Callers hold tokMu.
func (a *Agent) tokenExpiry() time.Time {
	_, exp, _ := tokenTimes(a.token)
	return exp
}

// refreshAt is when, on our clock, the token should be refreshed: margin before exp
// (on the server's clock), or half way through its life when the margin is longer.
func (a *Agent) refreshAt(token string) (time.Time, bool) {
	iat, exp, ok := tokenTimes(token)
	if !ok {
		return time.Time{}, false
	}
	margin := a.cfg.RefreshMargin
	if !iat.IsZero() && margin >= exp.Sub(iat) {
		margin = exp.Sub(iat) / 2
	}
	margin = a.refreshJitter.margin(token, margin, a.cfg.Jitter) // refresh_jitter.go
	return exp.Add(-margin).Add(-time.Duration(a.offset.Load())), true
}

// refresher re-attests before the token expires; the live stream keeps going.
func (a *Agent) refresher(ctx context.Context, log *slog.Logger) {
	failures := 0
	// retryAfter is the wait the server asked for after the last refusal, if any.
	var retryAfter time.Duration
	for {
		a.tokMu.Lock()
		tok := a.token
		a.tokMu.Unlock()
		at, ok := a.refreshAt(tok)
		var wait <-chan time.Time
		if ok {
			d := at.Sub(a.cfg.Now())
			if retryAfter > 0 {
				d = max(d, a.serverDelay(retryAfter))
			} else if failures > 0 {
				d = max(d, a.backoff(failures))
			}
			wait = time.After(max(d, 0))
		}
		select {
		case <-ctx.Done():
			return
		case <-a.tokenChanged:
			failures, retryAfter = 0, 0
			continue
		case <-wait:
		}
		_, err := a.attest(ctx, log, "scheduled refresh before expiry")
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures, retryAfter = 0, 0
			continue
		}
		if retryAfter = reject.RetryAfter(err); retryAfter > 0 {
			failures++
			log.Info("scheduled token refresh refused for now; retrying when the control plane said", "error", errMessage(err), "retry_in", retryAfter.Round(time.Millisecond))
			continue
		}
		if r, ok := reject.From(err); ok && reject.IsTerminal(r.GetReason()) {
			select {
			case a.revoked <- reject.Short(r.GetReason()):
			default:
			}
			return
		}
		failures++
		log.Warn("scheduled token refresh failed; will retry", "error", errMessage(err))
	}
}
