// Package cpclient owns how a host reaches its control plane: an HTTP/2 client whose
// TLS trusts exactly one CA (the one pinned at enrollment), the "pin by hash" mode an
// enrollment uses before it has that CA, and the NodeClusterService client built on
// either.
package cpclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
)

// ErrCAMismatch: no certificate the server presented hashes to the pinned CA hash.
var ErrCAMismatch = errors.New("the server's certificate chain does not contain the pinned CA")

// ErrBadServerURL: the URL is not an https URL with a host.
var ErrBadServerURL = errors.New("bad control plane URL")

// CheckURL accepts only https URLs with a host: a node token must never cross the
// network in clear.
func CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w %q: want https://HOST[:PORT]", ErrBadServerURL, raw)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("%w %q: the control plane must be reached over https", ErrBadServerURL, raw)
	}
	return u, nil
}

func transport(cfg *tls.Config) *http.Transport {
	p := new(http.Protocols)
	// The live stream is a bidi stream, which needs HTTP/2; never fall back.
	p.SetHTTP2(true)
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		Protocols:           p,
		// Pings find a dead connection (a NAT that forgot us) even between heartbeats.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
}

// NewHTTPClient trusts ca and nothing else (not the system roots): after enrollment
// the host knows exactly which CA its control plane uses.
func NewHTTPClient(ca *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &http.Client{Transport: transport(&tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
	})}
}

// HashPin is the outcome of a hash-pinned connection: the CA certificate the server
// presented whose SHA-256 matched, so the enrollment can save it as ca.crt.
type HashPin struct {
	mu sync.Mutex
	ca *x509.Certificate
}

// CA returns the pinned CA once a handshake succeeded, else nil.
func (p *HashPin) CA() *x509.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ca
}

// NewHashPinnedHTTPClient is for enrollment, when the host knows only the SHA-256 of
// the control plane's CA (from the enrollment token): some certificate in the chain
// the server presents must hash to caHash, and the server's leaf must verify against
// that certificate as the only root, for the URL's host. Go's normal verification is
// replaced (InsecureSkipVerify) only because the root is not known in advance; the
// check below is at least as strict as it.
func NewHashPinnedHTTPClient(serverURL string, matches func(der []byte) bool) (*http.Client, *HashPin, error) {
	u, err := CheckURL(serverURL)
	if err != nil {
		return nil, nil, err
	}
	host := u.Hostname()
	pin := &HashPin{}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         host,
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyPeerCertificate below
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			ca, err := verifyByHash(rawCerts, matches, host)
			if err != nil {
				return err
			}
			pin.mu.Lock()
			pin.ca = ca
			pin.mu.Unlock()
			return nil
		},
	}
	return &http.Client{Transport: transport(cfg)}, pin, nil
}

func verifyByHash(rawCerts [][]byte, matches func(der []byte) bool, host string) (*x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("server presented no certificate")
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, der := range rawCerts {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("server presented an unparsable certificate: %w", err)
		}
		certs = append(certs, c)
	}
	var ca *x509.Certificate
	for i, der := range rawCerts {
		if matches(der) {
			ca = certs[i]
			break
		}
	}
	if ca == nil {
		return nil, ErrCAMismatch
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       host,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("the server's certificate does not verify against the pinned CA for %s: %w", host, err)
	}
	return ca, nil
}

// NewClusterClient is the NodeClusterService client for serverURL over hc. It uses the
// Connect protocol with binary protobuf.
func NewClusterClient(hc *http.Client, serverURL string, opts ...connect.ClientOption) edgev1connect.NodeClusterServiceClient {
	return edgev1connect.NewNodeClusterServiceClient(hc, strings.TrimRight(serverURL, "/"), opts...)
}
