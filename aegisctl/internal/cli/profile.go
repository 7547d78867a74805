package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/atomicfile"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"go.yaml.in/yaml/v3"
)

// profile is what `login` saves: enough to call the control plane as this operator.
// The API token is a secret, so the file is 0600 in a 0700 directory.
type profile struct {
	Server string `yaml:"server"`
	Token  string `yaml:"token"`
	// CAPEM is the CA the server's certificate must chain to; empty means the
	// system roots.
	CAPEM string `yaml:"ca_pem,omitempty"`
}

// configPath is $AEGIS_CONFIG, else ~/.config/aegis/config.yaml.
func (a *app) configPath() (string, error) {
	if p := a.env.Getenv("AEGIS_CONFIG"); p != "" {
		return p, nil
	}
	home, err := a.env.HomeDir()
	if err != nil || home == "" {
		return "", errors.New("cannot find your home directory: set AEGIS_CONFIG to the profile file to use")
	}
	return filepath.Join(home, ".config", "aegis", "config.yaml"), nil
}

// loadProfile reads the saved profile and lets AEGIS_SERVER, AEGIS_TOKEN_FILE and
// AEGIS_CA_FILE stand in for (or override) its fields, so scripts need no login.
func (a *app) loadProfile() (profile, error) {
	var p profile
	path, err := a.configPath()
	if err != nil {
		return p, err
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := yaml.Unmarshal(data, &p); err != nil {
			return p, fmt.Errorf("the profile %s is not valid YAML: log in again with `%s login --server URL --token-file F`", path, a.name)
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return p, fmt.Errorf("cannot read the profile %s: %w", path, err)
	}
	if s := a.env.Getenv("AEGIS_SERVER"); s != "" {
		p.Server = s
	}
	if f := a.env.Getenv("AEGIS_TOKEN_FILE"); f != "" {
		tok, err := a.readToken(f)
		if err != nil {
			return p, fmt.Errorf("AEGIS_TOKEN_FILE: %w", err)
		}
		p.Token = tok
	}
	if f := a.env.Getenv("AEGIS_CA_FILE"); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return p, fmt.Errorf("AEGIS_CA_FILE: cannot read %s: %w", f, err)
		}
		p.CAPEM = string(pem)
	}
	if p.Server == "" || p.Token == "" {
		return p, fmt.Errorf("not logged in: run `%s login --server URL --token-file F`", a.name)
	}
	return p, nil
}

// saveProfile writes the profile atomically: a 0600 temp file in the same directory,
// fsync, rename, fsync the directory, so a crash leaves the old profile or the new
// one, never half of either.
func (a *app) saveProfile(p profile) (string, error) {
	path, err := a.configPath()
	if err != nil {
		return "", err
	}
	data, err := yaml.Marshal(p)
	if err != nil {
		return "", err
	}
	data = append([]byte("# Written by aegisctl login. Holds an API token: keep it 0600.\n"), data...)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("cannot create %s: %w", dir, err)
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return "", fmt.Errorf("cannot write the profile: %w", err)
	}
	return path, nil
}

// readToken reads an API token from a file, or from stdin for "-". The error never
// contains the file's content.
func (a *app) readToken(file string) (string, error) {
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(io.LimitReader(a.env.Stdin, 64<<10))
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("cannot read the API token from %s: %w", file, err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("the token file %s is empty: it should hold an API token (<id>.<secret>)", file)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("the token file %s does not hold one API token (<id>.<secret>)", file)
	}
	return tok, nil
}

// normalizeServer checks that URL is an https URL and drops a trailing slash.
func normalizeServer(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", usagef("--server must be a URL like https://controlplane.example:7443 (got %q)", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// httpClient speaks HTTP/2 over TLS, trusting caPEM when given, else the system roots.
func httpClient(caPEM []byte) (*http.Client, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the CA file holds no PEM certificate")
		}
		tlsConf.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}, nil
}

// bearer attaches the operator's API token to every call.
func bearer(token string) connect.Interceptor {
	return connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	})
}

// adminClient is the EdgeAdminService client for the saved (or env) profile.
func (a *app) adminClient() (edgev1connect.EdgeAdminServiceClient, profile, error) {
	p, err := a.loadProfile()
	if err != nil {
		return nil, p, err
	}
	server, err := normalizeServer(p.Server)
	if err != nil {
		return nil, p, fmt.Errorf("the profile's server %q is not a URL: log in again", p.Server)
	}
	p.Server = server
	hc, err := httpClient([]byte(p.CAPEM))
	if err != nil {
		return nil, p, fmt.Errorf("the profile's CA: %w: log in again with the right --ca-file", err)
	}
	return edgev1connect.NewEdgeAdminServiceClient(hc, server, connect.WithInterceptors(bearer(p.Token))), p, nil
}

// rpcError turns a failed admin call into one line that says what to do next.
func (a *app) rpcError(err error, server string) error {
	if isCertError(err) {
		return fmt.Errorf("the control plane at %s presented a certificate that the CA in your profile does not vouch for: log in again with the right --ca-file", server)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the control plane at %s did not answer in time: is it running?", server)
	}
	if errors.Is(err, context.Canceled) {
		return errors.New("interrupted")
	}
	msg := ""
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated:
		return fmt.Errorf("the API token was refused: log in again with `%s login --server %s --token-file F`", a.name, server)
	case connect.CodePermissionDenied:
		return fmt.Errorf("the API token's role may not do this (%s): ask an admin for a token that may", orDefault(msg, "permission denied"))
	case connect.CodeUnavailable:
		return fmt.Errorf("cannot reach the control plane at %s: is it running?", server)
	case connect.CodeUnimplemented:
		return fmt.Errorf("the control plane at %s does not support this call: is it an Aegis Edge control plane of the same version?", server)
	case connect.CodeNotFound, connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeAlreadyExists:
		return errors.New(orDefault(msg, connect.CodeOf(err).String()))
	}
	return fmt.Errorf("the control plane at %s failed the request (%s): %s", server, connect.CodeOf(err), orDefault(msg, "no detail"))
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// isCertError reports whether err is the TLS handshake refusing the server's chain.
func isCertError(err error) bool {
	var (
		ua  x509.UnknownAuthorityError
		he  x509.HostnameError
		ci  x509.CertificateInvalidError
		cve *tls.CertificateVerificationError
	)
	return errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &cve)
}
