// Package rotation owns the host side of a node's identity changes, for edged and
// aegisctl alike: the five-step key rotation of the guide (new key beside the old,
// RotateEdgeKey with both signatures, the local swap with the old key archived), the
// reconcile that heals a rotation interrupted at any point (a crash, a kill, a lost
// reply) by asking the control plane which key is current, token refresh, logout, and
// the housekeeping that deletes archived keys once their retention has passed.
//
// Every operation takes the state directory's lock, so the daemon and the CLI (on a
// stopped host) can never interleave. On disk, a rotation goes through these steps;
// node.key always exists (the old key or the new) at every crash point:
//
//	S1 node.key.next (0600) and rotation.json {rotation_id, timestamp_unix_ms, keep_old}
//	S2 RotateEdgeKey: the control plane commits
//	S3 node.token.next (0600)
//	S4 archive/<RFC 3339 UTC>.key = the old key, and its retention in archive.json
//	S5 node.key.next -> node.key
//	S6 node.token.next -> node.token
//	S7 rotation.json removed; the daemon switches its signer
package rotation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/keystore"
	"google.golang.org/protobuf/proto"
)

// DefaultKeepOld is how long an archived key is kept when nobody says otherwise.
const DefaultKeepOld = 24 * time.Hour

// Sentinel errors. Every error this package returns wraps one of them (or
// keystore.ErrNotEnrolled) and reads as one line saying what to do next; none holds
// a key or a token.
var (
	// ErrUnreachable: the control plane could not be asked; nothing changed locally
	// except that a rotation may stay pending (see ErrPending).
	ErrUnreachable = errors.New("control plane unreachable")
	// ErrPending: a rotation's outcome on the server is not known yet (the request or
	// its reply was lost). The host keeps its old key; the next reconcile settles it.
	ErrPending = errors.New("key rotation pending")
	// ErrRefused: the control plane refused; nothing was committed and the old key
	// stays in use.
	ErrRefused = errors.New("refused by the control plane")
	// ErrRevoked: the control plane says this identity is gone for good.
	ErrRevoked = errors.New("this host's identity was revoked")
	// ErrLocal: the state directory could not be read or written.
	ErrLocal = errors.New("local state error")
	// ErrKeyChanged: RotateOptions.IfKey named a key that is no longer in use (another
	// rotation replaced it first); nothing was done.
	ErrKeyChanged = errors.New("the key was already replaced")
)

// Step is a step boundary of a rotation, where Config.Fault is called.
type Step int

// The steps, as in the package comment.
const (
	StepNextKey      Step = iota + 1 // S1: node.key.next and rotation.json are durable
	StepCommitted                    // S2: the control plane answered RotateEdgeKey
	StepTokenNext                    // S3: node.token.next is durable
	StepArchived                     // S4: the old key is in the archive
	StepKeySwapped                   // S5: node.key is the new key
	StepTokenSwapped                 // S6: node.token is the new token
	StepDone                         // S7: rotation.json is gone
)

// Steps lists every step in order (for tests that crash at each).
var Steps = []Step{StepNextKey, StepCommitted, StepTokenNext, StepArchived, StepKeySwapped, StepTokenSwapped, StepDone}

func (s Step) String() string { return fmt.Sprintf("S%d", int(s)) }

// Identity is the part of a host's identity that changes: the key and its token.
type Identity struct {
	NodeID string
	Key    ed25519.PrivateKey
	Token  string
}

// Config of a Host. Dir and Client are required.
type Config struct {
	Dir    *keystore.Dir
	Client edgev1connect.NodeClusterServiceClient
	Logger *slog.Logger
	// Now is the local clock (archive names, retention); default time.Now.
	Now func() time.Time
	// ServerNow estimates the control plane's clock (envelope and request
	// timestamps); default Now.
	ServerNow func() time.Time
	// LearnServerTime, if set, is given every server_time the control plane sends.
	LearnServerTime func(time.Time)
	// Rand is the entropy for keys and rotation ids; default crypto/rand.
	Rand io.Reader
	// RPCTimeout bounds each call; default 15s. LogoutTimeout bounds the best-effort
	// logout call; default 5s.
	RPCTimeout    time.Duration
	LogoutTimeout time.Duration
	// OnChange is called, with the directory lock held, whenever node.key or
	// node.token changed: the daemon switches its in-memory signer and token there,
	// so memory and files never disagree for longer than the call.
	OnChange func(Identity)
	// Fault is for tests only: called at each step boundary; a non-nil error stops
	// the operation right there, as a crash would (nothing is cleaned up).
	Fault func(Step) error
}

// Host performs identity changes on one state directory.
type Host struct {
	cfg Config
	log *slog.Logger
}

// New returns a Host.
func New(cfg Config) *Host {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ServerNow == nil {
		cfg.ServerNow = cfg.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.RPCTimeout == 0 {
		cfg.RPCTimeout = 15 * time.Second
	}
	if cfg.LogoutTimeout == 0 {
		cfg.LogoutTimeout = 5 * time.Second
	}
	return &Host{cfg: cfg, log: cfg.Logger}
}

// Dial builds a NodeClusterService client for the identity in dir: its pinned CA and
// server URL. close releases idle connections.
func Dial(dir *keystore.Dir) (client edgev1connect.NodeClusterServiceClient, closeFn func(), err error) {
	node, err := dir.ReadNode()
	if err != nil {
		return nil, nil, err
	}
	_, ca, err := dir.ReadCA()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	hc := cpclient.NewHTTPClient(ca)
	return cpclient.NewClusterClient(hc, node.ServerURL), hc.CloseIdleConnections, nil
}

// DialHTTP is Dial with a given HTTP client (tests, and the daemon's own client).
func DialHTTP(hc *http.Client, serverURL string) edgev1connect.NodeClusterServiceClient {
	return cpclient.NewClusterClient(hc, serverURL)
}

func (h *Host) fault(s Step) error {
	if h.cfg.Fault == nil {
		return nil
	}
	return h.cfg.Fault(s)
}

func (h *Host) lock(ctx context.Context) (func(), error) {
	unlock, err := h.cfg.Dir.Lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	return unlock, nil
}

func (h *Host) learn(t time.Time) {
	if h.cfg.LearnServerTime != nil && !t.IsZero() && t.Unix() > 0 {
		h.cfg.LearnServerTime(t)
	}
}

func (h *Host) changed(id Identity) {
	if h.cfg.OnChange != nil {
		h.cfg.OnChange(id)
	}
}

// load reads the identity from disk. Callers hold the lock.
func (h *Host) load() (Identity, error) {
	d := h.cfg.Dir
	node, err := d.ReadNode()
	if err != nil {
		return Identity{}, err
	}
	key, err := d.ReadKey()
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	tok, err := d.ReadToken()
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	return Identity{NodeID: node.NodeID, Key: key, Token: tok}, nil
}

func pub(key ed25519.PrivateKey) ed25519.PublicKey { return key.Public().(ed25519.PublicKey) }

// FingerprintOf is the fingerprint of key's public half.
func FingerprintOf(key ed25519.PrivateKey) string { return fingerprint.Of(pub(key)) }

// tokenKey is the fingerprint a token is bound to (cnf), read without verification:
// the host only uses it to tell which of its own tokens goes with which key.
func tokenKey(tok string) string {
	c, err := nodetoken.Peek(tok)
	if err != nil {
		return ""
	}
	return c.Cnf.KeyFingerprint
}

// TokenExpiry is the token's exp as it says (display and scheduling only).
func TokenExpiry(tok string) time.Time {
	c, err := nodetoken.Peek(tok)
	if err != nil {
		return time.Time{}
	}
	return c.Expires()
}

// kind of an RPC failure, which decides what a step does next.
type failure int

const (
	transient failure = iota // the network, a timeout, an overloaded server: outcome unknown
	refused                  // a definitive "no": nothing was committed
	terminal                 // revoked or unknown node
)

func classify(err error) failure {
	if r, ok := reject.From(err); ok {
		switch {
		case reject.IsTerminal(r.GetReason()):
			return terminal
		case r.GetReason() == edgev1.RejectReason_REJECT_REASON_RATE_LIMITED:
			return transient
		}
		return refused
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled, connect.CodeUnknown,
			connect.CodeInternal, connect.CodeAborted, connect.CodeResourceExhausted, connect.CodeDataLoss:
			return transient
		}
		return refused
	}
	return transient
}

// Explain is an RPC failure of the operation what as one line, wrapped in the
// matching sentinel (ErrRevoked, ErrRefused or ErrUnreachable).
func Explain(what string, err error) error {
	if r, ok := reject.From(err); ok {
		if reject.IsTerminal(r.GetReason()) {
			return fmt.Errorf("%w (%s): %s: get a new enrollment token, run `aegis edge logout`, then `aegis edge enroll --token T`", ErrRevoked, reject.Short(r.GetReason()), r.GetMessage())
		}
		if r.GetReason() == edgev1.RejectReason_REJECT_REASON_RATE_LIMITED {
			return fmt.Errorf("%w: %s rate limited: wait a few seconds and try again", ErrUnreachable, what)
		}
		return fmt.Errorf("%w: %s: %s: %s", ErrRefused, what, reject.Short(r.GetReason()), r.GetMessage())
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		if classify(err) == refused {
			return fmt.Errorf("%w: %s: %s: %s", ErrRefused, what, ce.Code(), ce.Message())
		}
		return fmt.Errorf("%w: %s: %s: %s", ErrUnreachable, what, ce.Code(), ce.Message())
	}
	return fmt.Errorf("%w: %s: %v", ErrUnreachable, what, err)
}

// newRotationID is a random (version 4) UUID from the injected entropy.
func newRotationID(r io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	x := hex.EncodeToString(b[:])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:], nil
}

func randomStreamID(r io.Reader) string {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		_, _ = rand.Read(b[:])
	}
	return hex.EncodeToString(b[:])
}

// record is rotation.json: what a reconcile needs to resend the very same request.
type record struct {
	RotationID      string `json:"rotation_id"`
	NodeID          string `json:"node_id"`
	TimestampUnixMs int64  `json:"timestamp_unix_ms"`
	KeepOld         string `json:"keep_old"`
	FleetRunID      string `json:"fleet_run_id,omitempty"`
	OldKey          string `json:"old_key_fingerprint"`
	NewKey          string `json:"new_key_fingerprint"`
}

func (r record) keepOld() time.Duration {
	d, err := time.ParseDuration(r.KeepOld)
	if err != nil || d <= 0 {
		return DefaultKeepOld
	}
	return d
}

// writeRecord writes rotation.json as part of b (data fsynced; b.Sync makes the
// entry durable).
func (h *Host) writeRecord(b *keystore.Batch, r record) error {
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return b.WriteFile(keystore.RotationFile, append(raw, '\n'))
}

// readRecord returns rotation.json; ok is false when it is absent or unreadable.
func (h *Host) readRecord() (record, bool) {
	raw, err := os.ReadFile(h.cfg.Dir.File(keystore.RotationFile))
	if err != nil {
		return record{}, false
	}
	var r record
	if json.Unmarshal(raw, &r) != nil || r.RotationID == "" || r.TimestampUnixMs == 0 {
		return record{}, false
	}
	return r, true
}

func (h *Host) readKeyFile(name string) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(h.cfg.Dir.File(name))
	if err != nil {
		return nil, err
	}
	return keystore.DecodeKey(raw)
}

func (h *Host) readTokenFile(name string) (string, error) {
	raw, err := os.ReadFile(h.cfg.Dir.File(name))
	if err != nil {
		return "", err
	}
	tok := string(trim(raw))
	if tok == "" {
		return "", errors.New("empty token file")
	}
	return tok, nil
}

func trim(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// sealed sends one unary envelope (kind, payload) signed by id.Key with id.Token.
// When the token is expired or refused as a token, it attests with the same key once
// (saving the new token) and tries again. It returns the identity as it ends up.
func (h *Host) sealed(ctx context.Context, id Identity, kind edgev1.EnvelopeKind, payload proto.Message, call func(context.Context, *edgev1.SealNodeEnvelope) error) (Identity, error) {
	if exp := TokenExpiry(id.Token); !exp.IsZero() && !h.cfg.ServerNow().Before(exp) {
		var err error
		if id, err = h.reattest(ctx, id); err != nil {
			return id, err
		}
	}
	for attempt := 0; ; attempt++ {
		env, err := seal.Seal(id.Key, seal.Header{
			Kind:     kind,
			Token:    id.Token,
			NodeID:   id.NodeID,
			StreamID: randomStreamID(h.cfg.Rand),
			Sequence: 1,
			Time:     h.cfg.ServerNow(),
		}, payload)
		if err != nil {
			return id, fmt.Errorf("%w: seal: %v", ErrLocal, err)
		}
		cctx, cancel := context.WithTimeout(ctx, h.cfg.RPCTimeout)
		err = call(cctx, env)
		cancel()
		h.log.Debug("sealed call", "kind", kind, "error", err)
		if err == nil {
			return id, nil
		}
		if r, ok := reject.From(err); ok {
			h.learn(r.GetServerTime().AsTime())
			if attempt == 0 && tokenProblem(r.GetReason()) {
				if id, err = h.reattest(ctx, id); err != nil {
					return id, err
				}
				continue
			}
		}
		return id, err
	}
}

func tokenProblem(r edgev1.RejectReason) bool {
	switch r {
	case edgev1.RejectReason_REJECT_REASON_TOKEN_EXPIRED, edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED,
		edgev1.RejectReason_REJECT_REASON_TOKEN_INVALID, edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW:
		return true
	}
	return false
}

// reattest gets a fresh token for id.Key, saves it as node.token and tells OnChange.
// Callers hold the lock and id.Key is node.key.
func (h *Host) reattest(ctx context.Context, id Identity) (Identity, error) {
	res, err := Attest(ctx, h.cfg.Client, id.NodeID, id.Key, h.cfg.RPCTimeout, h.learn)
	if err != nil {
		return id, err
	}
	id.Token = res.Token
	if err := h.cfg.Dir.WriteToken(res.Token); err != nil {
		return id, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	h.changed(id)
	return id, nil
}
