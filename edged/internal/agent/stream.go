package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
	"google.golang.org/protobuf/types/known/durationpb"
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

	needAttest := !exp.IsZero() && !a.serverNow().Before(exp)
	attempt := 0
	// toldLater: the last attempt ended with the server asking us to come back later
	// (logged once at info, then quietly until a stream is welcomed again).
	toldLater := false
	// hinted is the last "come back in" the server gave (0 once a stream is welcomed):
	// if, back then, nothing listens, the retries spread from it (afterUnansweredHint).
	hinted := time.Duration(0)
	for {
		var err error
		welcomed := false
		// A rotation an earlier run (or a failed step) left behind is settled first,
		// so the stream opens with the key the server holds.
		if rerr := a.reconcile(ctx, log, host); rerr != nil {
			return a.markRevoked(ctx, log, "revoked")
		}
		a.tokMu.Lock()
		needAttest = needAttest || (!a.tokenExpiry().IsZero() && !a.serverNow().Before(a.tokenExpiry()))
		a.tokMu.Unlock()
		if needAttest {
			_, err = a.attest(ctx, log, "token expired or refused")
			if err == nil {
				needAttest = false
			}
		}
		if err == nil {
			a.update(func(s *Snapshot) { s.Status = StatusConnecting })
			welcomed, err = a.session(ctx, callsCtx, log)
		}
		if ctx.Err() != nil {
			return nil
		}
		var reason string
		delay := time.Duration(-1)
		// later is why the server asked us to come back later ("" if it did not).
		later := ""
		// asked is the delay the server asked for, before the jitter on top.
		asked := time.Duration(0)
		var disc *disconnectError
		var sig *revokedSignal
		switch {
		case errors.As(err, &disc):
			switch disc.reason {
			case edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED:
				reason = "revoked"
			case edgev1.DisconnectReason_DISCONNECT_REASON_REATTEST:
				needAttest = true
			}
			if disc.after > 0 {
				asked = disc.after
				delay = a.serverDelay(disc.after)
				later = "disconnect: " + strings.ToLower(strings.TrimPrefix(disc.reason.String(), "DISCONNECT_REASON_"))
			}
		case errors.As(err, &sig):
			reason = sig.reason
		default:
			if r, ok := reject.From(err); ok {
				a.learnServerTime(r.GetServerTime().AsTime())
				switch {
				case reject.IsTerminal(r.GetReason()):
					reason = reject.Short(r.GetReason())
				case reject.NeedsAttest(r.GetReason()):
					needAttest = true
				}
				if ra := reject.RetryAfter(err); ra > 0 {
					// busy (stream admission) or rate_limited (an attestation):
					// the server named our slot; the backoff does not grow.
					asked = ra
					delay = a.serverDelay(ra)
					later = reject.Short(r.GetReason())
				}
			}
		}
		if errors.Is(err, errLoggedOut) {
			return err
		}
		if reason != "" {
			return a.markRevoked(ctx, log, reason)
		}
		if welcomed {
			attempt = 0
			toldLater = false
			hinted = 0
		}
		if asked > 0 {
			hinted = asked
		}
		if delay < 0 {
			if hinted > 0 && nothingListened(err) {
				delay = a.afterUnansweredHint(hinted, attempt)
			} else {
				delay = a.backoff(attempt)
			}
			attempt++
		}
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
			toldLater = true
		case later != "":
			log.Debug("the control plane asked this daemon to come back later", "why", later, "retry_in", delay.Round(time.Millisecond), "retry_at", retryAt)
		default:
			toldLater = false
			log.Warn("stream to the control plane ended; reconnecting", "error", msg, "retry_in", delay.Round(time.Millisecond), "reattest", needAttest)
		}
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

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type received struct {
	cmd *edgev1.EdgeCommand
	err error
}

// session runs one ConnectEdge stream. welcomed says whether it got as far as a
// Welcome (then the reconnect backoff starts over).
func (a *Agent) session(ctx, callsCtx context.Context, log *slog.Logger) (welcomed bool, err error) {
	// The stream outlives ctx by a moment so that on shutdown it is closed cleanly
	// (end of request stream) rather than reset.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stream := a.client.ConnectEdge(sctx)
	streamID := randomID()
	// sent holds the heartbeats not yet acknowledged (only the stream loop touches it).
	sent := map[uint64]time.Time{}
	// One goroutine owns the request side: it numbers, seals and sends each
	// envelope in turn, so sequence numbers reach the server in order and no lock
	// is held across a network send. It reads the key and token under tokMu for
	// each envelope (a rotation swaps both at once), then lets go before sending.
	type sent1 struct {
		seq uint64
		err error
	}
	type outgoing struct {
		ev   *edgev1.EdgeEvent
		done chan sent1
	}
	outbox := make(chan outgoing)
	go func() {
		var seq uint64
		for {
			var o outgoing
			select {
			case o = <-outbox:
			case <-sctx.Done():
				return
			}
			a.tokMu.Lock()
			key, token, nodeID, now := a.key, a.token, a.nodeID, a.serverNow()
			a.tokMu.Unlock()
			seq++
			env, err := seal.Seal(key, seal.Header{
				Kind:     edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT,
				Token:    token,
				NodeID:   nodeID,
				StreamID: streamID,
				Sequence: seq,
				Time:     now,
			}, o.ev)
			if err == nil {
				err = stream.Send(env)
			}
			if err == nil {
				n := seq
				a.update(func(s *Snapshot) { s.Sent = n })
			}
			o.done <- sent1{seq, err}
		}
	}()
	// send hands ev to the sending goroutine (tool calls send from their own
	// goroutines too) and returns its sequence number once it is on the wire.
	send := func(ev *edgev1.EdgeEvent) (uint64, error) {
		o := outgoing{ev: ev, done: make(chan sent1, 1)}
		select {
		case outbox <- o:
		case <-sctx.Done():
			return 0, io.EOF
		}
		r := <-o.done
		if r.err != nil {
			return 0, r.err
		}
		return r.seq, nil
	}

	recv := make(chan received, 1)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			cmd, err := stream.Receive()
			select {
			case recv <- received{cmd, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	// closeStream ends the request side and waits briefly for the server to finish.
	closeStream := func() {
		a.calls.disconnected()
		_ = stream.CloseRequest()
		select {
		case <-recvDone:
		case r := <-recv:
			_ = r
		case <-time.After(2 * time.Second):
		}
		cancel()
		_ = stream.CloseResponse()
	}
	// streamErr turns a failed Send (io.EOF: the server ended the stream) into the
	// server's actual error, which Receive reports.
	streamErr := func(err error) error {
		if !errors.Is(err, io.EOF) {
			return err
		}
		select {
		case r := <-recv:
			if r.err != nil {
				return eofMeaning(r.err)
			}
		case <-time.After(2 * time.Second):
		}
		return errors.New("the control plane closed the stream")
	}

	hostname, _ := os.Hostname()
	hello := &edgev1.Hello{AgentVersion: a.cfg.Version, Hostname: hostname, Os: runtime.GOOS}
	if a.cfg.MaxKeyAge > 0 { // the control plane shows the host's due time by it too
		hello.LocalMaxKeyAge = durationpb.New(a.cfg.MaxKeyAge)
	}
	if _, err := send(&edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Hello{Hello: hello}}); err != nil {
		err = streamErr(err)
		cancel()
		return false, err
	}

	var welcome *edgev1.Welcome
	select {
	case <-ctx.Done():
		closeStream()
		return false, ctx.Err()
	case r := <-a.revoked:
		closeStream()
		return false, &revokedSignal{reason: r}
	case <-a.loggedOut:
		closeStream()
		return false, errLoggedOut
	case <-time.After(a.cfg.WelcomeTimeout):
		cancel()
		return false, fmt.Errorf("the control plane did not answer Hello within %s", a.cfg.WelcomeTimeout)
	case r := <-recv:
		if r.err != nil {
			return false, eofMeaning(r.err)
		}
		if d := r.cmd.GetDisconnect(); d != nil {
			return false, &disconnectError{reason: d.GetReason(), after: d.GetReconnectAfter().AsDuration(), msg: d.GetMessage()}
		}
		welcome = r.cmd.GetWelcome()
		if welcome == nil {
			cancel()
			return false, fmt.Errorf("protocol error: expected Welcome, got %T", r.cmd.GetCommand())
		}
	}
	a.learnServerTime(welcome.GetServerTime().AsTime())
	a.welcomePolicy(welcome) // cadence.go
	interval := a.cfg.HeartbeatInterval
	if d := welcome.GetHeartbeatInterval().AsDuration(); d > 0 {
		interval = d
	}
	now := a.cfg.Now()
	a.update(func(s *Snapshot) {
		s.Status = StatusConnected
		s.SessionID = welcome.GetSessionId()
		s.ConnectedSince = now.UTC()
		s.LastError = ""
		s.Streams++
		s.Acked = 0
	})
	log.Info("connected to the control plane", "session_id", welcome.GetSessionId(), "heartbeat_interval", interval)

	heartbeat := func() error {
		n, err := send(&edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Heartbeat{Heartbeat: &edgev1.Heartbeat{
			Uptime: durationpb.New(a.cfg.Now().Sub(a.started)),
		}}})
		if err != nil {
			err = streamErr(err)
			cancel()
			return err
		}
		sent[n] = a.cfg.Now()
		return nil
	}
	// Tool calls send on this stream from now on; unacknowledged results go first.
	defer a.calls.disconnected()
	a.calls.connected(func(ev *edgev1.EdgeEvent) error {
		_, err := send(ev)
		return err
	})
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	stale := 3*interval + time.Second
	for {
		select {
		case <-ctx.Done():
			closeStream()
			return true, ctx.Err()
		case r := <-a.revoked:
			closeStream()
			return true, &revokedSignal{reason: r}
		case <-a.loggedOut:
			closeStream()
			return true, errLoggedOut
		case <-a.kick:
			// The key or token just changed: the next envelope, at once, carries it.
			if err := heartbeat(); err != nil {
				return true, err
			}
		case <-ticker.C:
			// A heartbeat unacknowledged for 3 intervals means a half-open connection.
			for _, at := range sent {
				if a.cfg.Now().Sub(at) > stale {
					cancel()
					return true, errStale
				}
			}
			if err := heartbeat(); err != nil {
				return true, err
			}
		case r := <-recv:
			if r.err != nil {
				return true, eofMeaning(r.err)
			}
			switch c := r.cmd.GetCommand().(type) {
			case *edgev1.EdgeCommand_HeartbeatAck:
				ack := c.HeartbeatAck
				a.learnServerTime(ack.GetServerTime().AsTime())
				// Acks are in order: anything up to this sequence is settled.
				for s := range sent {
					if s <= ack.GetSequence() {
						delete(sent, s)
					}
				}
				at := a.cfg.Now().UTC()
				a.update(func(s *Snapshot) {
					s.LastHeartbeatAck = at
					s.Acked = max(s.Acked, ack.GetSequence())
				})
				log.Debug("heartbeat acknowledged", "sequence", ack.GetSequence())
			case *edgev1.EdgeCommand_Disconnect:
				d := c.Disconnect
				cancel()
				return true, &disconnectError{reason: d.GetReason(), after: d.GetReconnectAfter().AsDuration(), msg: d.GetMessage()}
			case *edgev1.EdgeCommand_Welcome:
				// A second Welcome is harmless; ignore it.
			case *edgev1.EdgeCommand_RefreshToken, *edgev1.EdgeCommand_RotateKey, *edgev1.EdgeCommand_RotationPolicy:
				a.handleCommand(ctx, log, r.cmd)
			case *edgev1.EdgeCommand_InvokeTool, *edgev1.EdgeCommand_CancelTool, *edgev1.EdgeCommand_CommandResultAck,
				*edgev1.EdgeCommand_QueryTool:
				a.handleToolCommand(callsCtx, r.cmd)
			}
		}
	}
}

func eofMeaning(err error) error {
	if errors.Is(err, io.EOF) {
		return errors.New("the control plane closed the stream")
	}
	return err
}

// attest proves possession of the node key for a fresh token, writes it atomically
// under the state lock and switches the in-memory token: a live stream carries the new
// token from its next envelope on.
func (a *Agent) attest(ctx context.Context, log *slog.Logger, why string) (time.Time, error) {
	a.attestMu.Lock()
	defer a.attestMu.Unlock()
	a.tokMu.Lock()
	defer a.tokMu.Unlock()
	res, err := rotation.Attest(ctx, a.client, a.nodeID, a.key, a.cfg.RPCTimeout, a.learnServerTime)
	if err != nil {
		return time.Time{}, err
	}
	// The server has already blacklisted the old token, so the new one is used in
	// memory even if writing it fails; a restart would then re-attest.
	a.token = res.Token
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
