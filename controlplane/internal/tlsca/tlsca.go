// Package tlsca owns the control plane's TLS identity: on first start it generates a
// private CA and a server certificate into the data directory (keys 0600) and reuses
// them afterwards; or it loads an operator-supplied certificate and key. Either way
// the server presents the chain [server certificate, CA certificate], so that a host
// holding only the CA's hash (from an enrollment token) can find and pin the CA.
package tlsca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/securefile"
)

// File names inside the data directory.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

const (
	caLifetime     = 10 * 365 * 24 * time.Hour
	serverLifetime = 365 * 24 * time.Hour
	// renewBefore: a server certificate this close to expiry is reissued at start.
	renewBefore = 30 * 24 * time.Hour
)

// Bundle is the TLS identity the server runs with.
type Bundle struct {
	// Certificate carries the chain [server, CA] and the server key.
	Certificate tls.Certificate
	// CADER is the CA certificate enrollment tokens pin (by SHA-256).
	CADER []byte
	// CAPEM is CADER in PEM form (what a host stores as ca.crt).
	CAPEM []byte
}

// CAHash is the SHA-256 of the CA certificate, the pin enrollment tokens carry.
func (b Bundle) CAHash() [32]byte { return sha256.Sum256(b.CADER) }

// Ensure loads the CA and server certificate from dir, generating whatever is missing,
// and reissues the server certificate when it does not cover hosts or is near expiry.
// now is the real wall clock (certificates are checked by clients against theirs).
func Ensure(dir string, hosts []string, now time.Time, rnd io.Reader) (Bundle, error) {
	caCert, caKey, err := ensureCA(dir, now, rnd)
	if err != nil {
		return Bundle{}, err
	}
	leaf, leafKey, err := loadPair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Bundle{}, err
	}
	if err != nil || !serverCertUsable(leaf, caCert, hosts, now) {
		leaf, leafKey, err = issueServer(dir, caCert, caKey, hosts, now, rnd)
		if err != nil {
			return Bundle{}, err
		}
	}
	return Bundle{
		Certificate: tls.Certificate{
			Certificate: [][]byte{leaf.Raw, caCert.Raw},
			PrivateKey:  leafKey,
			Leaf:        leaf,
		},
		CADER: caCert.Raw,
		CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}),
	}, nil
}

// Load uses an operator's certificate file (leaf first, then any intermediates and the
// CA) and key. The last certificate in the file is the one enrollment tokens pin, so
// the file should end with the CA; a lone certificate pins itself.
func Load(certFile, keyFile string) (Bundle, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return Bundle{}, fmt.Errorf("load --tls-cert/--tls-key: %w", err)
	}
	last := pair.Certificate[len(pair.Certificate)-1]
	if _, err := x509.ParseCertificate(last); err != nil {
		return Bundle{}, fmt.Errorf("parse the last certificate in %s: %w", certFile, err)
	}
	return Bundle{
		Certificate: pair,
		CADER:       last,
		CAPEM:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: last}),
	}, nil
}

// DefaultHosts are the names every generated server certificate covers, plus extra.
func DefaultHosts(extra ...string) []string {
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	for _, e := range extra {
		if e != "" && !slices.Contains(hosts, e) {
			hosts = append(hosts, e)
		}
	}
	return hosts
}

func ensureCA(dir string, now time.Time, rnd io.Reader) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	cert, key, err := loadPair(certPath, keyPath)
	if err == nil {
		if !cert.IsCA {
			return nil, nil, fmt.Errorf("%s is not a CA certificate", certPath)
		}
		return cert, key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	// One of the two files alone means an earlier start died half way, or someone
	// deleted a file: regenerating silently would invalidate every pinned host.
	if exists(certPath) || exists(keyPath) {
		return nil, nil, fmt.Errorf("only one of %s and %s exists: restore the other or remove both to generate a new CA (enrolled hosts pin the old one)", certPath, keyPath)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := serialNumber(rnd)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Aegis Edge control plane CA", Organization: []string{"Aegis Edge"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rnd, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	if err := writePair(certPath, keyPath, der, k); err != nil {
		return nil, nil, err
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, k, nil
}

func issueServer(dir string, ca *x509.Certificate, caKey crypto.Signer, hosts []string, now time.Time, rnd io.Reader) (*x509.Certificate, crypto.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("generate server key: %w", err)
	}
	serial, err := serialNumber(rnd)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "aegis-controlplane", Organization: []string{"Aegis Edge"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(serverLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rnd, tmpl, ca, k.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create server certificate: %w", err)
	}
	if err := writePair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile), der, k); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, k, nil
}

func serverCertUsable(leaf, ca *x509.Certificate, hosts []string, now time.Time) bool {
	if leaf.CheckSignatureFrom(ca) != nil || now.Add(renewBefore).After(leaf.NotAfter) {
		return false
	}
	for _, h := range hosts {
		if leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// writePair writes the key first (0600) so that a certificate never exists without
// its key.
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	if err := securefile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return securefile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, nil, fmt.Errorf("%s is readable by group or others (mode %04o): chmod 600 it", keyPath, fi.Mode().Perm())
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s: no PEM CERTIFICATE block", certPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: not a PKCS#8 key", keyPath)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: unsupported key type", keyPath)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil || !bytes.Equal(pubDER, cert.RawSubjectPublicKeyInfo) {
		return nil, nil, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return cert, signer, nil
}

func serialNumber(rnd io.Reader) (*big.Int, error) {
	n, err := randInt(rnd)
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n, nil
}

func randInt(rnd io.Reader) (*big.Int, error) {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return nil, err
	}
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b[:]), nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
