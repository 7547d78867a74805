// Package enroll owns a host's enrollment: redeem a single-use enrollment token for an
// identity. It pins the control plane's TLS to the CA hash in the token, proves
// possession of a freshly generated Ed25519 key against a server challenge, and writes
// ca.crt, node.key, node.token and node.json (last) into the state directory, leaving
// nothing behind on any failure. edged and aegisctl share it.
package enroll

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/backoff"
	"github.com/aegis-edge/aegis/api/enrolltoken"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// Sentinel errors; every returned error wraps exactly one and reads as one line that
// says what to do next.
var (
	ErrAlreadyEnrolled = errors.New("already enrolled")
	ErrBadToken        = errors.New("enrollment token is malformed")
	ErrNoServer        = errors.New("no control plane URL")
	ErrCAMismatch      = errors.New("CA fingerprint mismatch")
	ErrServerCert      = errors.New("server certificate invalid")
	ErrUnreachable     = errors.New("control plane unreachable")
	ErrTokenUsed       = errors.New("enrollment token already used")
	ErrTokenExpired    = errors.New("enrollment token expired")
	ErrTokenRevoked    = errors.New("enrollment token revoked")
	ErrTokenInvalid    = errors.New("enrollment token not accepted")
	ErrRejected        = errors.New("enrollment refused")
	ErrLocal           = errors.New("local state error")
)

// Options of one enrollment.
type Options struct {
	// Token is the enrollment token text (the secret part never appears in errors).
	Token string
	// ServerURL overrides the URL carried in the token.
	ServerURL string
	// Name is the host's display name; default os.Hostname().
	Name string
	// StateDir is the state directory (already resolved; see keystore.ResolveDir).
	StateDir string
	// Rand is the key's entropy source; default crypto/rand.
	Rand io.Reader
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Timeout bounds the network part; default 30s.
	Timeout time.Duration
}

// Result of a successful enrollment.
type Result struct {
	NodeID         string
	Tenant         keystore.Tenant
	Tags           []string
	Name           string
	ServerURL      string
	KeyFingerprint string
	TokenExpires   time.Time
	StateDir       string
}

// Enroll runs the whole flow. The state directory lock is held throughout, so two
// enrollments (or an enrollment and a rotation) can never interleave.
func Enroll(ctx context.Context, opts Options) (_ Result, retErr error) {
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	tok, err := enrolltoken.Parse(opts.Token)
	if err != nil {
		// Parse errors never echo the secret. ErrBadToken already says "malformed": keep
		// only what is wrong with it.
		why := strings.TrimPrefix(err.Error(), enrolltoken.ErrMalformed.Error()+": ")
		return Result{}, fmt.Errorf("%w: %s; copy the whole token printed by `aegis edge enrollment-tokens create`", ErrBadToken, why)
	}
	server := opts.ServerURL
	if server == "" {
		server = tok.Server
	}
	if server == "" {
		return Result{}, fmt.Errorf("%w: the token carries no server URL; pass --server https://HOST:PORT", ErrNoServer)
	}
	if _, err := cpclient.CheckURL(server); err != nil {
		return Result{}, fmt.Errorf("%w; pass --server https://HOST:PORT", err)
	}
	hostname, _ := os.Hostname()
	name := opts.Name
	if name == "" {
		name = hostname
	}

	dir := keystore.Open(opts.StateDir)
	_, statErr := os.Stat(dir.Path())
	created := errors.Is(statErr, os.ErrNotExist)
	if err := dir.Create(); err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if created {
		// A failed first enrollment leaves no trace, not even the directory.
		defer func() {
			if retErr != nil {
				_ = os.Remove(dir.File(keystore.LockFile))
				_ = os.Remove(dir.Path())
			}
		}()
	}
	if err := dir.CheckPermissions(); err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	unlock, err := dir.Lock(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	defer unlock()
	if node, err := dir.ReadNode(); err == nil {
		return Result{}, fmt.Errorf("%w as %s (state dir %s); run `aegis edge logout` first", ErrAlreadyEnrolled, node.NodeID, dir.Path())
	} else if !errors.Is(err, keystore.ErrNotEnrolled) {
		return Result{}, fmt.Errorf("%w: %v; run `aegis edge logout` first", ErrAlreadyEnrolled, err)
	}

	hc, pin, err := cpclient.NewHashPinnedHTTPClient(server, tok.MatchesCA)
	if err != nil {
		return Result{}, err
	}
	defer hc.CloseIdleConnections()
	client := cpclient.NewClusterClient(hc, server)
	netCtx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	ch, err := challenge(netCtx, client)
	if err != nil {
		return Result{}, explain(err, server)
	}
	pub, key, err := ed25519.GenerateKey(opts.Rand)
	if err != nil {
		return Result{}, fmt.Errorf("%w: generate key: %v", ErrLocal, err)
	}
	nonce := ch.Msg.GetNonce()
	resp, err := client.Enroll(netCtx, connect.NewRequest(&edgev1.EnrollRequest{
		EnrollmentTokenId: tok.ID,
		EnrollmentSecret:  tok.Secret,
		PublicKey:         pub,
		Nonce:             nonce,
		Signature:         ed25519.Sign(key, seal.EnrollMessage(nonce, tok.ID, pub)),
		DisplayName:       name,
		Hostname:          hostname,
		Os:                runtime.GOOS,
	}))
	if err != nil {
		return Result{}, explain(err, server)
	}
	ca := pin.CA()
	if ca == nil {
		// Cannot happen after a successful TLS call, but never write an empty ca.crt.
		return Result{}, fmt.Errorf("%w: the TLS connection pinned no CA", ErrCAMismatch)
	}
	m := resp.Msg
	if m.GetNodeId() == "" || m.GetNodeSecurityToken() == "" {
		return Result{}, fmt.Errorf("%w: the server's reply has no node id or token; check that --server is an Aegis control plane", ErrRejected)
	}
	node := keystore.Node{
		NodeID:     m.GetNodeId(),
		Tenant:     keystore.Tenant{ID: m.GetTenant().GetId(), Name: m.GetTenant().GetName(), Kind: m.GetTenant().GetKind()},
		ServerURL:  server,
		Name:       name,
		EnrolledAt: opts.Now().UTC().Truncate(time.Second),
	}
	if err := write(dir, ca.Raw, key, m.GetNodeSecurityToken(), node); err != nil {
		return Result{}, fmt.Errorf("%w: %v (nothing was kept; the enrollment token is spent: ask for a new one)", ErrLocal, err)
	}
	return Result{
		NodeID:         node.NodeID,
		Tenant:         node.Tenant,
		Tags:           m.GetTags(),
		Name:           name,
		ServerURL:      server,
		KeyFingerprint: fingerprint.Of(pub),
		TokenExpires:   m.GetTokenExpiresAt().AsTime(),
		StateDir:       dir.Path(),
	}, nil
}

// challenge asks for an enrollment nonce. A refusal that says when to retry (the
// per-source limit during a bulk enrollment) is retried then, with a little jitter
// on top, for as long as the enrollment's network budget lasts; the enrollment
// token is not spent by a refused challenge.
func challenge(ctx context.Context, client edgev1connect.NodeClusterServiceClient) (*connect.Response[edgev1.ChallengeResponse], error) {
	wait := backoff.Policy{Min: 250 * time.Millisecond, Max: time.Minute}
	for {
		ch, err := client.Challenge(ctx, connect.NewRequest(&edgev1.ChallengeRequest{
			Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ENROLL,
		}))
		ra := reject.RetryAfter(err)
		if err == nil || ra <= 0 {
			return ch, err
		}
		d := wait.After(ra)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(d):
		}
	}
}

// write stores the identity, node.json last; on any failure it removes every file it
// wrote, so the directory is as unenrolled as before.
func write(dir *keystore.Dir, caDER []byte, key ed25519.PrivateKey, token string, node keystore.Node) (err error) {
	var written []string
	defer func() {
		if err != nil {
			for i := len(written) - 1; i >= 0; i-- {
				_ = dir.Remove(written[i])
			}
		}
	}()
	step := func(name string, f func() error) error {
		written = append(written, name)
		return f()
	}
	if err = step(keystore.CAFile, func() error { return dir.WriteFile(keystore.CAFile, keystore.EncodeCertPEM(caDER)) }); err != nil {
		return err
	}
	if err = step(keystore.KeyFile, func() error { return dir.WriteKey(keystore.KeyFile, key) }); err != nil {
		return err
	}
	if err = step(keystore.TokenFile, func() error { return dir.WriteToken(token) }); err != nil {
		return err
	}
	// A marker from a previous, revoked identity must not outlive this enrollment.
	if err = dir.Remove(keystore.RevokedFile); err != nil {
		return err
	}
	if err = step(keystore.NodeFile, func() error { return dir.WriteNode(node) }); err != nil {
		return err
	}
	return nil
}

// explain turns an RPC failure into one line saying what to do next.
func explain(err error, server string) error {
	if errors.Is(err, cpclient.ErrCAMismatch) {
		return fmt.Errorf("%w: the server's certificate does not match the CA fingerprint in the token: check --server / ask for a new token", ErrCAMismatch)
	}
	if r, ok := reject.From(err); ok {
		switch r.GetReason() {
		case edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_USED:
			return fmt.Errorf("%w: this enrollment token was already used (tokens are single-use): ask your operator for a new one (`aegis edge enrollment-tokens create`)", ErrTokenUsed)
		case edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_EXPIRED:
			return fmt.Errorf("%w: this enrollment token has expired: ask your operator for a new one (`aegis edge enrollment-tokens create`)", ErrTokenExpired)
		case edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_REVOKED:
			return fmt.Errorf("%w: this enrollment token was revoked: ask your operator for a new one (`aegis edge enrollment-tokens create`)", ErrTokenRevoked)
		case edgev1.RejectReason_REJECT_REASON_ENROLLMENT_TOKEN_INVALID:
			return fmt.Errorf("%w: the control plane at %s does not know this enrollment token: check --server, or ask for a new token", ErrTokenInvalid, server)
		case edgev1.RejectReason_REJECT_REASON_NONCE_INVALID:
			return fmt.Errorf("%w: the server's challenge expired before it was answered (%s): run the command again", ErrRejected, r.GetMessage())
		case edgev1.RejectReason_REJECT_REASON_RATE_LIMITED:
			if ra := reject.RetryAfter(err); ra > 0 {
				return fmt.Errorf("%w: rate limited by the control plane (%s): run the command again in %s; to enroll many hosts from one address, ask your operator about --bulk-enroll-sources", ErrRejected, r.GetMessage(), ra.Round(time.Second))
			}
			return fmt.Errorf("%w: rate limited by the control plane: wait a minute and run the command again", ErrRejected)
		default:
			return fmt.Errorf("%w: %s (%s): run the command again, or ask your operator for a new token", ErrRejected, r.GetMessage(), reject.Short(r.GetReason()))
		}
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		if ce.Code() == connect.CodeUnavailable || ce.Code() == connect.CodeDeadlineExceeded {
			if isCertError(err) {
				return fmt.Errorf("%w: %v: check --server (the name must be one the server's certificate covers)", ErrServerCert, ce.Unwrap())
			}
			return fmt.Errorf("%w: cannot reach the control plane at %s (%v): check --server and that the control plane is running", ErrUnreachable, server, ce.Unwrap())
		}
		return fmt.Errorf("%w: the control plane at %s answered %s: %s; check --server", ErrRejected, server, ce.Code(), ce.Message())
	}
	return fmt.Errorf("%w: cannot reach the control plane at %s (%v): check --server and that the control plane is running", ErrUnreachable, server, err)
}

// isCertError reports whether err is a TLS verification failure other than a CA
// mismatch (e.g. the URL's host is not in the server's certificate).
func isCertError(err error) bool {
	var hn x509.HostnameError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	return errors.As(err, &hn) || errors.As(err, &ua) || errors.As(err, &ci)
}
