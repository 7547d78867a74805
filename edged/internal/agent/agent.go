// Package agent owns the daemon's life: wait for an enrollment, keep one
// authenticated stream to the control plane (Hello, heartbeats, acks), keep the node
// token fresh without dropping that stream, reconnect with capped full-jitter backoff,
// and act on the server's typed refusals (only revoked and unknown_node end an
// identity for good).
package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/backoff"
	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/internal/policy"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
)

// Status values shown by `aegis edge status`.
const (
	StatusConnected    = "Connected"
	StatusDisconnected = "Disconnected"
	StatusConnecting   = "Connecting"
	StatusRevoked      = "Revoked"
)

// ErrRevoked: the control plane ended this identity (revoked or unknown node).
var ErrRevoked = errors.New("identity revoked by the control plane")

// Config of an Agent. Zero durations take the documented defaults.
type Config struct {
	Dir    *keystore.Dir
	Logger *slog.Logger
	// HeartbeatInterval is used until a Welcome names the server's interval.
	HeartbeatInterval time.Duration
	// RefreshMargin: refresh the token this long before it expires.
	RefreshMargin time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (full jitter below the cap).
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// EnrollPoll is how often the state dir is checked while not enrolled.
	EnrollPoll time.Duration
	// RPCTimeout bounds unary calls (Challenge, Attest).
	RPCTimeout time.Duration
	// WelcomeTimeout bounds the wait for Welcome after Hello (default 2m): long,
	// because a server admitting a storm of streams may take a while to get to this
	// one, and cancelling it would only put it at the back of the queue. A dead
	// connection is found sooner by HTTP/2 pings.
	WelcomeTimeout time.Duration
	// MaxServerDelay caps a delay the control plane asks for (Disconnect's
	// reconnect_after, a refusal's retry_after); default 10m.
	MaxServerDelay time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Jitter returns a uniform float in [0,1); default math/rand/v2.
	Jitter func() float64
	// Version goes into Hello.
	Version string
	// HTTPClient builds the control plane client for a pinned CA; default
	// cpclient.NewHTTPClient.
	HTTPClient func(id *keystore.Identity) *http.Client
	// ClientOptions are added to the control plane client (tests inject faults here).
	ClientOptions []connect.ClientOption
	// HousekeepInterval is how often archived keys past their retention are deleted;
	// default 1m.
	HousekeepInterval time.Duration
	// Rand is the entropy for new keys; default crypto/rand.
	Rand io.Reader
	// RotationFault is for tests only: rotation.Config.Fault for every rotation.
	RotationFault func(rotation.Step) error
	// Policy is the local security policy tool calls are evaluated against; nil
	// denies every call.
	Policy *policy.Policy
	// MaxOutputBytes caps one tool call's output (default 1 MiB).
	MaxOutputBytes int64
	// DefaultToolDeadline applies to a call that came without a deadline (default 60s).
	DefaultToolDeadline time.Duration
	// ResultBuffer is how many unacknowledged tool results are kept across
	// reconnects (default 256); the oldest is dropped when it is full.
	ResultBuffer int
	// MaxKeyAge is rotation.max_key_age: rotate the key before it is this old (0:
	// only the control plane's policies decide). KeepOld is how long a routine
	// rotation keeps the archived key (0: the rotation default).
	MaxKeyAge time.Duration
	KeepOld   time.Duration
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.RefreshMargin == 0 {
		c.RefreshMargin = 300 * time.Second
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 250 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.EnrollPoll == 0 {
		c.EnrollPoll = time.Second
	}
	if c.RPCTimeout == 0 {
		c.RPCTimeout = 15 * time.Second
	}
	if c.WelcomeTimeout == 0 {
		c.WelcomeTimeout = 2 * time.Minute
	}
	if c.MaxServerDelay == 0 {
		c.MaxServerDelay = 10 * time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Jitter == nil {
		c.Jitter = rand.Float64
	}
	if c.HousekeepInterval == 0 {
		c.HousekeepInterval = time.Minute
	}
	if c.MaxOutputBytes == 0 {
		c.MaxOutputBytes = 1 << 20
	}
	if c.DefaultToolDeadline == 0 {
		c.DefaultToolDeadline = 60 * time.Second
	}
	if c.ResultBuffer == 0 {
		c.ResultBuffer = 256
	}
	if c.HTTPClient == nil {
		c.HTTPClient = func(id *keystore.Identity) *http.Client { return cpclient.NewHTTPClient(id.CA) }
	}
}

// Snapshot is the daemon's state as the local API reports it.
type Snapshot struct {
	Enrolled         bool
	NodeID           string
	Tenant           keystore.Tenant
	Status           string
	KeyFingerprint   string
	TokenExpires     time.Time
	ServerURL        string
	ConnectedSince   time.Time
	LastError        string
	LastHeartbeatAck time.Time
	// SessionID is the server's id of the current stream; Streams counts streams that
	// reached Welcome since start (a token refresh must not add one).
	SessionID string
	Streams   uint64
	// Sent is the sequence number of the last envelope sent on the current stream and
	// Acked the highest one the server acknowledged.
	Sent  uint64
	Acked uint64
	// Rotations counts key rotations this daemon completed since start.
	Rotations uint64
	// SecurityContext is the context the current token names ("" when none).
	SecurityContext string
	// ToolCalls are the tool calls running now; PendingResults the results the
	// server has not acknowledged yet.
	ToolCalls      int
	PendingResults int
	// Routine rotation (cadence.go): the effective max key age (0: none), when the
	// current key was made and falls due, the moment picked to rotate it, and why
	// the last attempt failed.
	MaxKeyAge      time.Duration
	KeySince       time.Time
	KeyDueAt       time.Time
	NextRotationAt time.Time
	RotationError  string
}

// Agent is one running daemon.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	mu   sync.Mutex
	snap Snapshot

	// offset is the server clock minus ours, in nanoseconds, learned from every
	// server_time we see; envelope timestamps are on the server's clock.
	offset atomic.Int64

	// tokMu guards the identity's mutable part (the key and token), and is only
	// ever held to read or swap them: never across a network call. attesting is
	// set while an attestation is in flight; the stream's sender waits for it to
	// close, so no envelope leaves with a token the server has just blacklisted.
	tokMu     sync.Mutex
	nodeID    string
	key       ed25519.PrivateKey
	token     string
	attesting chan struct{}

	// attestMu serializes every change of key or token (attest, rotation, logout).
	// Lock order: attestMu, then the state dir lock, then tokMu (rotation callbacks
	// take tokMu with the dir lock held; attest takes tokMu alone, and the dir lock
	// without it).
	attestMu     sync.Mutex
	client       edgev1connect.NodeClusterServiceClient
	tokenChanged chan struct{}
	revoked      chan string // reason, from the refresher

	// host is the rotation.Host of the identity being served (nil when not serving).
	host atomic.Pointer[rotation.Host]
	// kick asks the live stream for a heartbeat now (after a key or token swap).
	kick chan struct{}
	// loggedOut ends serving after a logout; loggingOut makes a revocation seen
	// during the logout (the server kicks the stream) not leave a marker.
	loggedOut  chan struct{}
	loggingOut atomic.Bool

	// calls are the tool calls of the identity being served (set by serve).
	calls *calls

	// cadence schedules routine rotations (set by New, run by Run).
	cadence *cadence
	// refreshJitter spreads token refreshes (refresh_jitter.go).
	refreshJitter refreshJitter
}

// New makes an agent; Run starts it.
func New(cfg Config) *Agent {
	cfg.defaults()
	a := &Agent{cfg: cfg, log: cfg.Logger, started: cfg.Now(), kick: make(chan struct{}, 1), loggedOut: make(chan struct{}, 1)}
	a.snap = Snapshot{Status: StatusDisconnected, LastError: "not enrolled: run `aegis edge enroll --token T`"}
	a.cadence = a.newCadence()
	return a
}

// Status is the current snapshot.
func (a *Agent) Status() Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.snap
}

func (a *Agent) update(f func(s *Snapshot)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(&a.snap)
}

func (a *Agent) serverNow() time.Time {
	return a.cfg.Now().Add(time.Duration(a.offset.Load()))
}

func (a *Agent) learnServerTime(t time.Time) {
	if t.IsZero() || t.Unix() <= 0 {
		return
	}
	a.offset.Store(int64(t.Sub(a.cfg.Now())))
}

// Run serves until ctx ends (then it returns nil) or a local problem makes running
// pointless (loose permissions, a broken state dir). It never returns because of the
// network: that is retried forever, and a revoked identity waits for a new enrollment.
// The caller holds the daemon lock.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.cfg.Dir.CheckPermissions(); err != nil {
		return err
	}
	hkDone := make(chan struct{})
	cadenceDone := make(chan struct{})
	hctx, stopHK := context.WithCancel(ctx)
	defer func() {
		stopHK()
		<-hkDone
		<-cadenceDone
	}()
	go func() {
		defer close(hkDone)
		a.housekeeping(hctx)
	}()
	go func() {
		defer close(cadenceDone)
		a.cadence.run(hctx)
	}()
	for {
		id, err := a.waitEnrolled(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		err = a.serve(ctx, id)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errLoggedOut) {
			continue
		}
		if !errors.Is(err, ErrRevoked) {
			return err
		}
		// Revoked: the marker is on disk; waitEnrolled reports it and waits for the
		// host owner to log out and enroll again.
	}
}

// waitEnrolled returns the identity once the directory holds a complete, non-revoked
// enrollment, polling so that an edged started before `aegis edge enroll` picks it up.
func (a *Agent) waitEnrolled(ctx context.Context) (*keystore.Identity, error) {
	dir := a.cfg.Dir
	loggedWait, loggedRevoked, loggedMismatch := false, false, ""
	for {
		select {
		case <-a.loggedOut: // a logout already handled
		default:
		}
		node, err := dir.ReadNode()
		switch {
		case errors.Is(err, keystore.ErrNotEnrolled):
			if !loggedWait {
				a.log.Info("waiting for enrollment: run `aegis edge enroll --token T`", "state_dir", dir.Path())
				loggedWait = true
			}
			a.update(func(s *Snapshot) {
				*s = Snapshot{Status: StatusDisconnected, LastError: "not enrolled: run `aegis edge enroll --token T`"}
			})
		case err != nil:
			return nil, err
		default:
			// An enrollment (or a rotation) writes these files under the directory's
			// lock: read them only when no one is writing, never half written.
			unlock, free, err := dir.TryLock()
			if err != nil {
				return nil, err
			}
			if !free {
				a.update(func(s *Snapshot) {
					s.Status = StatusDisconnected
					s.LastError = "the state dir is busy: an enrollment or key rotation is in progress"
				})
				break
			}
			id, done, err := a.readEnrolled(node, &loggedRevoked, &loggedMismatch)
			unlock()
			if err != nil {
				return nil, err
			}
			if done {
				return id, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(a.cfg.EnrollPoll):
		}
	}
}

// readEnrolled reads a complete enrollment for node under the directory's lock: done
// with the identity to serve, or not done (revoked, or node.key overwritten by hand)
// after saying so in the status.
func (a *Agent) readEnrolled(node keystore.Node, loggedRevoked *bool, loggedMismatch *string) (*keystore.Identity, bool, error) {
	dir := a.cfg.Dir
	rev, revoked, err := dir.ReadRevoked()
	if err != nil {
		return nil, false, err
	}
	if !revoked || rev.NodeID != node.NodeID {
		if err := dir.CheckPermissions(); err != nil {
			return nil, false, err
		}
		id, err := dir.Load()
		if err != nil {
			return nil, false, fmt.Errorf("state dir %s is incomplete: %w; run `aegis edge logout` and enroll again", dir.Path(), err)
		}
		// A node.key written over by hand would be refused as bad_signature on
		// every attempt: say so once and wait for the owner to put it back.
		var mm *keystore.KeyMismatchError
		if err := dir.CheckKeyBinding(id.Key, id.Token); errors.As(err, &mm) {
			if *loggedMismatch != mm.Error() {
				a.log.Error("not connecting: node.key does not match the key this host's token is bound to",
					"node_id", node.NodeID, "key_fingerprint", mm.KeyFingerprint, "token_key_fingerprint", mm.TokenFingerprint,
					"archived_match", mm.Archived, "fix", mm.Error())
				*loggedMismatch = mm.Error()
			}
			a.update(func(s *Snapshot) {
				s.Enrolled = true
				s.NodeID = node.NodeID
				s.Tenant = node.Tenant
				s.ServerURL = node.ServerURL
				s.Status = StatusDisconnected
				s.SessionID = ""
				s.ConnectedSince = time.Time{}
				s.KeyFingerprint = mm.KeyFingerprint
				s.LastError = mm.Error()
			})
			return nil, false, nil
		} else if err != nil {
			return nil, false, err
		}
		return id, true, nil
	}
	if !*loggedRevoked {
		a.log.Error("this host's identity was revoked by the control plane; edged will not reconnect with it",
			"node_id", node.NodeID, "reason", rev.Reason, "revoked_at", rev.At,
			"fix", "get a new enrollment token, then run `aegis edge logout` and `aegis edge enroll --token T`")
		*loggedRevoked = true
	}
	a.update(func(s *Snapshot) {
		s.Enrolled = true
		s.NodeID = node.NodeID
		s.Tenant = node.Tenant
		s.ServerURL = node.ServerURL
		s.Status = StatusRevoked
		s.SessionID = ""
		s.ConnectedSince = time.Time{}
		s.LastError = "revoked (" + rev.Reason + "): get a new enrollment token, run `aegis edge logout`, then `aegis edge enroll --token T`"
		if s.KeyFingerprint == "" {
			if key, err := dir.ReadKey(); err == nil {
				s.KeyFingerprint = fingerprint.Of(key.Public().(ed25519.PublicKey))
			}
		}
	})
	return nil, false, nil
}

// retry is the one retry schedule of this daemon (reconnects, refreshes, routine
// rotations): api/backoff with the configured bounds and jitter source.
func (a *Agent) retry() backoff.Policy {
	return backoff.Policy{Min: a.cfg.MinBackoff, Max: a.cfg.MaxBackoff, Rand: a.cfg.Jitter}
}

func (a *Agent) backoff(n int) time.Duration { return a.retry().Delay(n) }

// afterUnansweredHint is the wait before retry n when the control plane asked this
// daemon to come back in hint (a restart's Disconnect, a busy slot) and, back then,
// nothing listened: the restart is taking longer than the server expected. The
// schedule is the daemon's own backoff, but starting from the hint instead of from
// MinBackoff (full jitter, doubling, capped at MaxBackoff before the jitter), so a
// fleet the server spread over a span stays spread while it waits, instead of
// retrying every few hundred milliseconds and arriving together the moment the new
// process listens.
func (a *Agent) afterUnansweredHint(hint time.Duration, n int) time.Duration {
	return backoff.Policy{Min: max(min(hint, a.cfg.MaxBackoff), a.cfg.MinBackoff), Max: a.cfg.MaxBackoff, Rand: a.cfg.Jitter}.Delay(n)
}

// nothingListened says whether err is a dial that failed (connection refused,
// nothing on the port): the control plane never saw the attempt.
func nothingListened(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// serverDelay is how long to wait when the control plane said "come back in d": d,
// capped at MaxServerDelay, plus a little jitter on top (never less than asked).
func (a *Agent) serverDelay(d time.Duration) time.Duration {
	return backoff.Policy{Min: a.cfg.MinBackoff, Max: a.cfg.MaxServerDelay, Rand: a.cfg.Jitter}.After(d)
}

// tokenExpiry is the token's exp and iat as the token itself says (unverified: the
// daemon cannot verify the server's signature, and only schedules with it).
func tokenTimes(token string) (iat, exp time.Time, ok bool) {
	c, err := nodetoken.Peek(token)
	if err != nil || c.ExpiresAt == nil {
		return time.Time{}, time.Time{}, false
	}
	if c.IssuedAt != nil {
		iat = c.IssuedAt.Time
	}
	return iat, c.ExpiresAt.Time, true
}
