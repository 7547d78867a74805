package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"
)

// testTLS is a self-signed certificate for 127.0.0.1 and a pool that trusts it.
func testTLS(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"h2", "http/1.1"},
	}, pool
}

// startConnServer serves handler on a loopback port the way Server does.
func startConnServer(t *testing.T, handler http.Handler, handshake time.Duration) (*connServer, *x509.CertPool, <-chan error) {
	t.Helper()
	conf, pool := testTLS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h1 := &http.Server{Handler: handler, TLSConfig: conf, HTTP2: http2Config()}
	cs, err := newConnServer(ln, conf, h1, context.Background(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if handshake > 0 {
		cs.handshakeTimeout = handshake
	}
	served := make(chan error, 1)
	go func() { served <- cs.Serve() }()
	t.Cleanup(cs.Close)
	return cs, pool, served
}

func protoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "no TLS state", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, r.Proto)
	})
}

func getProto(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	return string(body)
}

// One port serves HTTP/2 (daemons, aegisctl, browsers) from connServer's own
// goroutines and HTTP/1.1 (curl, a load balancer's probe) through net/http, both
// with the connection's TLS state.
func TestConnServerServesHTTP2AndHTTP1(t *testing.T) {
	cs, pool, _ := startConnServer(t, protoHandler(), 0)
	url := "https://" + cs.ln.Addr().String() + "/"

	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	defer h2.CloseIdleConnections()
	if got := getProto(t, h2, url); got != "HTTP/2.0" {
		t.Fatalf("h2 client served as %q", got)
	}
	h1 := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	defer h1.CloseIdleConnections()
	if got := getProto(t, h1, url); got != "HTTP/1.1" {
		t.Fatalf("HTTP/1.1 client served as %q", got)
	}
}

// A connection that never sends its TLS hello is closed after the handshake
// timeout, so a slow or silent client cannot hold a descriptor for ever.
func TestConnServerClosesASilentConnection(t *testing.T) {
	cs, _, _ := startConnServer(t, protoHandler(), 50*time.Millisecond)
	c, err := net.Dial("tcp", cs.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The server closes it: the read ends (EOF or reset), long before this
	// test's own deadline, which only keeps a broken server from hanging the suite.
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("read on a silent connection: %v; want it closed by the server", err)
	}
}

// Shutdown sends GOAWAY to open h2 connections, waits for them, and Serve returns
// http.ErrServerClosed; new connections are refused.
func TestConnServerShutdown(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "done")
	})
	cs, pool, served := startConnServer(t, slow, 0)
	url := "https://" + cs.ln.Addr().String() + "/"
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	defer client.CloseIdleConnections()
	answered := make(chan string, 1)
	go func() { answered <- getProto(t, client, url) }()
	<-entered

	shut := make(chan error, 1)
	go func() { shut <- cs.Shutdown(context.Background()) }()
	// The listener closes at once; the request in flight still finishes.
	for {
		c, err := net.Dial("tcp", cs.ln.Addr().String())
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	if got := <-answered; got != "done" {
		t.Fatalf("in-flight request answered %q", got)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve returned %v, want http.ErrServerClosed", err)
	}
}
