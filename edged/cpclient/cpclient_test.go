package cpclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return ca, key
}

// serverCert issues a leaf for ips/names; chain says whether the CA is sent too.
func serverCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, chain bool, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: ips, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	if chain {
		c.Certificate = append(c.Certificate, ca.Raw)
	}
	return c
}

func startServer(t *testing.T, cert tls.Certificate) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Proto", r.Proto)
	}))
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func matcher(ca *x509.Certificate) func([]byte) bool {
	h := sha256.Sum256(ca.Raw)
	return func(der []byte) bool {
		g := sha256.Sum256(der)
		return subtle.ConstantTimeCompare(g[:], h[:]) == 1
	}
}

func TestHashPinnedAcceptsChainWithPinnedCA(t *testing.T) {
	ca, caKey := newCA(t)
	srv := startServer(t, serverCert(t, ca, caKey, true, net.ParseIP("127.0.0.1")))
	hc, pin, err := NewHashPinnedHTTPClient(srv.URL, matcher(ca))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s, want HTTP/2", resp.Proto)
	}
	if pin.CA() == nil || !pin.CA().Equal(ca) {
		t.Fatal("pinned CA not recorded")
	}
	// The pinned CA then works as the only root of the normal client.
	resp, err = NewHTTPClient(pin.CA()).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

func TestHashPinnedRefusesOtherCA(t *testing.T) {
	ca, caKey := newCA(t)
	other, _ := newCA(t)
	srv := startServer(t, serverCert(t, ca, caKey, true, net.ParseIP("127.0.0.1")))
	hc, pin, _ := NewHashPinnedHTTPClient(srv.URL, matcher(other))
	_, err := hc.Get(srv.URL)
	if !errors.Is(err, ErrCAMismatch) {
		t.Fatalf("got %v, want ErrCAMismatch", err)
	}
	if pin.CA() != nil {
		t.Fatal("a CA was pinned after a mismatch")
	}
}

func TestHashPinnedRefusesChainWithoutCA(t *testing.T) {
	ca, caKey := newCA(t)
	srv := startServer(t, serverCert(t, ca, caKey, false, net.ParseIP("127.0.0.1")))
	hc, _, _ := NewHashPinnedHTTPClient(srv.URL, matcher(ca))
	if _, err := hc.Get(srv.URL); !errors.Is(err, ErrCAMismatch) {
		t.Fatalf("got %v, want ErrCAMismatch", err)
	}
}

func TestHashPinnedRefusesWrongHost(t *testing.T) {
	ca, caKey := newCA(t)
	// Valid chain, but the leaf does not cover 127.0.0.1.
	srv := startServer(t, serverCert(t, ca, caKey, true, net.ParseIP("10.9.9.9")))
	hc, _, _ := NewHashPinnedHTTPClient(srv.URL, matcher(ca))
	_, err := hc.Get(srv.URL)
	var hn x509.HostnameError
	if !errors.As(err, &hn) {
		t.Fatalf("got %v, want a hostname error", err)
	}
}

func TestHashPinnedRefusesLeafNotSignedByPinnedCA(t *testing.T) {
	ca, _ := newCA(t)
	rogue, rogueKey := newCA(t)
	// The attacker sends the genuine CA in the chain but signs the leaf with its own.
	cert := serverCert(t, rogue, rogueKey, false, net.ParseIP("127.0.0.1"))
	cert.Certificate = append(cert.Certificate, ca.Raw)
	srv := startServer(t, cert)
	hc, _, _ := NewHashPinnedHTTPClient(srv.URL, matcher(ca))
	_, err := hc.Get(srv.URL)
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		t.Fatalf("got %v, want unknown authority", err)
	}
}

func TestPinnedClientRefusesOtherCA(t *testing.T) {
	ca, caKey := newCA(t)
	other, _ := newCA(t)
	srv := startServer(t, serverCert(t, ca, caKey, true, net.ParseIP("127.0.0.1")))
	if _, err := NewHTTPClient(other).Get(srv.URL); err == nil {
		t.Fatal("client pinned to another CA connected")
	}
}

func TestCheckURL(t *testing.T) {
	for _, bad := range []string{"http://x:1", "x:1", "https://", "ftp://x"} {
		if _, err := CheckURL(bad); !errors.Is(err, ErrBadServerURL) {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
	if _, err := CheckURL("https://127.0.0.1:7443"); err != nil {
		t.Error(err)
	}
}
