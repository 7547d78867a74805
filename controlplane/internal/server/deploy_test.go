package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/internal/bootstrap"
	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/tlsca"
)

// startServer runs a real control plane on 127.0.0.1 with f over the defaults.
func startServer(t *testing.T, f config.File, logw io.Writer) *Server {
	t.Helper()
	if f.DataDir == "" {
		f.DataDir = filepath.Join(t.TempDir(), "data")
	}
	f.Listen = "127.0.0.1:0"
	f.AdvertiseURL = "https://127.0.0.1:7443"
	cfg, err := config.Merge(config.Defaults(), f).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if logw == nil {
		logw = t.Output()
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, Options{Config: cfg, Logger: log, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return s
}

func tlsClient(caPEM ...[]byte) *http.Client {
	pool := x509.NewCertPool()
	for _, p := range caPEM {
		pool.AppendCertsFromPEM(p)
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A scraper reaches /metrics over plain HTTP on --metrics-listen, and the TLS port no
// longer serves it; aegis_build_info is there from the first scrape.
func TestMetricsListenAndBuildInfo(t *testing.T) {
	t.Parallel()
	s := startServer(t, config.File{MetricsListen: "127.0.0.1:0"}, nil)
	if s.MetricsAddr() == nil {
		t.Fatal("no metrics listener")
	}
	code, body := get(t, http.DefaultClient, "http://"+s.MetricsAddr().String()+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("plain metrics: %d", code)
	}
	if !strings.Contains(body, `aegis_build_info{commit="`) || !strings.Contains(body, `goversion="go`) {
		t.Fatalf("aegis_build_info missing:\n%s", body)
	}
	c := tlsClient(s.CAPEM())
	if code, _ := get(t, c, s.URL()+"/metrics"); code != http.StatusNotFound {
		t.Fatalf("TLS /metrics with --metrics-listen: %d, want 404", code)
	}
	if code, _ := get(t, c, s.URL()+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz: %d", code)
	}
}

func TestMetricsOnTLSPortByDefault(t *testing.T) {
	t.Parallel()
	s := startServer(t, config.File{}, nil)
	if s.MetricsAddr() != nil {
		t.Fatal("metrics listener without --metrics-listen")
	}
	code, body := get(t, tlsClient(s.CAPEM()), s.URL()+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, "aegis_build_info") {
		t.Fatalf("TLS /metrics: %d", code)
	}
}

// The token from --bootstrap-token-file is the admin credential, no admin.token is
// written, and the token's secret reaches no log line.
func TestBootstrapTokenFile(t *testing.T) {
	t.Parallel()
	const token = "0123456789abcdef.00112233445566778899aabbccddeeff"
	dir := t.TempDir()
	tf := filepath.Join(dir, "token")
	if err := os.WriteFile(tf, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	data := filepath.Join(dir, "data")
	s := startServer(t, config.File{DataDir: data, BootstrapTokenFile: tf}, &logs)
	if _, err := os.Stat(filepath.Join(data, bootstrap.AdminTokenFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("admin.token written although a bootstrap token was given: %v", err)
	}
	admin := edgev1connect.NewEdgeAdminServiceClient(tlsClient(s.CAPEM()), s.URL())
	req := connect.NewRequest(&edgev1.WhoAmIRequest{})
	req.Header().Set("Authorization", "Bearer "+token)
	who, err := admin.WhoAmI(context.Background(), req)
	if err != nil {
		t.Fatalf("WhoAmI with the bootstrap token: %v", err)
	}
	if who.Msg.GetRole() != "admin" {
		t.Fatalf("role %q, want admin", who.Msg.GetRole())
	}
	// A different secret under the same id is refused.
	bad := connect.NewRequest(&edgev1.WhoAmIRequest{})
	bad.Header().Set("Authorization", "Bearer 0123456789abcdef.ffffffffffffffffffffffffffffffff")
	if _, err := admin.WhoAmI(context.Background(), bad); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("wrong secret: %v, want unauthenticated", err)
	}
	if strings.Contains(logs.String(), "00112233445566778899aabbccddeeff") {
		t.Fatal("the bootstrap token's secret reached the log")
	}
}

func TestBootstrapTokenMalformedRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tf := filepath.Join(dir, "token")
	secret := "not-a-token-but-a-secret-value"
	os.WriteFile(tf, []byte(secret), 0o600)
	cfg, err := config.Merge(config.Defaults(), config.File{DataDir: filepath.Join(dir, "data"), BootstrapTokenFile: tf}).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	err = CheckConfig(cfg)
	if !errors.Is(err, bootstrap.ErrBadAdminToken) || strings.Contains(err.Error(), secret) {
		t.Fatalf("check-config: %v", err)
	}
	_, err = New(context.Background(), Options{Config: cfg})
	if !errors.Is(err, bootstrap.ErrBadAdminToken) || strings.Contains(err.Error(), secret) {
		t.Fatalf("start: %v", err)
	}
}

// A certificate replaced on disk (as a Secret update or cert-manager renewal does) is
// served by the running process, and a broken replacement never stops it serving.
func TestTLSReloadWithoutRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	os.Mkdir(filepath.Join(dir, "a"), 0o700)
	os.Mkdir(filepath.Join(dir, "b"), 0o700)
	first, err := tlsca.Ensure(filepath.Join(dir, "a"), tlsca.DefaultHosts(), now, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	second, err := tlsca.Ensure(filepath.Join(dir, "b"), tlsca.DefaultHosts(), now, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certF, keyF := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	install := func(from string) {
		for src, dst := range map[string]string{tlsca.ServerCertFile: certF, tlsca.ServerKeyFile: keyF} {
			b, err := os.ReadFile(filepath.Join(dir, from, src))
			if err != nil {
				t.Fatal(err)
			}
			if src == tlsca.ServerCertFile {
				ca, _ := os.ReadFile(filepath.Join(dir, from, tlsca.CACertFile))
				b = append(b, ca...)
			}
			tmp := dst + ".tmp"
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, dst); err != nil {
				t.Fatal(err)
			}
		}
	}
	install("a")
	s := startServer(t, config.File{TLSCert: certF, TLSKey: keyF}, nil)
	addr := s.Addr().String()
	served := func() []byte {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // only reading which certificate is served
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	if !bytes.Equal(served(), first.Certificate.Leaf.Raw) {
		t.Fatal("not serving the first certificate")
	}

	// A half-written renewal: the key file is garbage. The old pair stays.
	os.WriteFile(keyF, []byte("garbage"), 0o600)
	s.certs.reload()
	if !bytes.Equal(served(), first.Certificate.Leaf.Raw) {
		t.Fatal("a broken key file replaced the served certificate")
	}

	install("b")
	s.certs.reload()
	if !bytes.Equal(served(), second.Certificate.Leaf.Raw) {
		t.Fatal("the renewed certificate is not served after reload")
	}
	// The real client path: trusting only the new CA works now.
	if code, _ := get(t, tlsClient(second.CAPEM), s.URL()+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz with the new CA: %d", code)
	}
}

// lockedBuffer is a log sink the test can read while the server writes to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
