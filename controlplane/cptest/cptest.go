// Package cptest starts a real control plane in-process for tests: a real TLS HTTP/2
// listener on 127.0.0.1, a real store (SQLite in the data directory unless a
// PostgreSQL URL is given), the real bootstrap (CA, admin token), and the same
// handlers the binary serves. Other modules' integration tests (edged, aegisctl)
// import it, so its API is kept stable.
package cptest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/server"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Options configure Start. The zero value is a working control plane.
type Options struct {
	// DataDir defaults to t.TempDir().
	DataDir string
	// DatabaseURL: "" means SQLite in DataDir; postgres://... uses PostgreSQL.
	DatabaseURL string
	// Now is the protocol clock (token expiry, nonces, skew); nil means time.Now.
	Now func() time.Time
	// TokenTTL (default 1h), HeartbeatInterval (default 10s), MaxClockSkew (default 60s).
	TokenTTL          time.Duration
	HeartbeatInterval time.Duration
	MaxClockSkew      time.Duration
	// RotationOverlap is how long after a key rotation a stream that verified the
	// old key may keep using it (default 60s, as controlplane serve).
	RotationOverlap time.Duration
	// HousekeepingInterval is how often expired blacklist rows and nonces are purged
	// (default: every minute, as in production).
	HousekeepingInterval time.Duration
	// RewarmInterval is how often the cached blacklist is re-read (0: the default).
	RewarmInterval time.Duration
	// ExecGrace is how long after its deadline an Exec waits for the result of a
	// daemon that lost its stream (default 30s, as in production).
	ExecGrace time.Duration
	// FleetMaxConcurrency caps the hosts in flight in one fleet run (default 100,
	// as --fleet-max-concurrency).
	FleetMaxConcurrency int
	// MaxConcurrentRotations caps rotations and attestations in progress at once
	// (default 64, as --max-concurrent-rotations).
	MaxConcurrentRotations int
	// FleetResumeGrace is how long a fleet run resumed after Restart waits for a
	// host's stream to come back before skipping it as disconnected (default 15s).
	FleetResumeGrace time.Duration
	// FleetLeaseDuration is how long a fleet run's lease lasts unrenewed (default
	// 15s).
	FleetLeaseDuration time.Duration
	// Logger defaults to warnings and errors on the test's output.
	Logger *slog.Logger
	// ReplicaID names the replica in session rows and replica notifications
	// (default host:port, distinct for each Start).
	ReplicaID string

	// StreamAdmissionRate and StreamAdmissionBurst pace new streams (default 300/s,
	// burst 300, as --stream-admission-rate/-burst).
	StreamAdmissionRate  float64
	StreamAdmissionBurst int
	// ShutdownReconnectWindow caps the spread of shutdown reconnect hints (default
	// 45s, as --shutdown-reconnect-window).
	ShutdownReconnectWindow time.Duration
	// ChallengeRatePerSource and ChallengeBurstPerSource limit challenges per
	// address (default 50/s, burst 200); BulkEnrollSources (comma-separated
	// addresses or CIDRs) get BulkEnrollRate/BulkEnrollBurst instead (default 300).
	ChallengeRatePerSource  float64
	ChallengeBurstPerSource int
	BulkEnrollSources       string
	BulkEnrollRate          float64
	BulkEnrollBurst         int

	// adminToken is the bootstrap admin token of the first replica (StartReplica):
	// the store mints it once, so later replicas find no admin.token of their own.
	adminToken string
}

// Server is a running in-process control plane.
type Server struct {
	// URL is "https://127.0.0.1:<port>".
	URL string
	// CAPEM is the CA certificate (PEM) that signs the server certificate.
	CAPEM []byte
	// AdminToken is the bootstrap admin API token ("<id>.<secret>").
	AdminToken string
	// Store is the live store; it is replaced by Restart and closed by Stop.
	Store store.Store
	// DataDir is the control plane's data directory.
	DataDir string

	opts Options
	addr string
	mu   sync.Mutex
	stop func()
	http *http.Client
	srv  *server.Server
}

// Start starts a control plane and stops it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
		// As an operator would make it: the server refuses a data dir others can
		// read unless it can tighten it, and warns when it does.
		if err := os.Chmod(opts.DataDir, 0o700); err != nil {
			t.Fatalf("cptest: %v", err)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s := &Server{opts: opts, DataDir: opts.DataDir, addr: "127.0.0.1:0"}
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	// On Restart the port was just released; retry briefly before giving up.
	for i := 0; err != nil && s.addr != "127.0.0.1:0" && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
		ln, err = net.Listen("tcp", s.addr)
	}
	if err != nil {
		t.Fatalf("cptest: listen on %s: %v", s.addr, err)
	}
	s.addr = ln.Addr().String()
	s.URL = "https://" + s.addr

	f := config.Merge(config.Defaults(), config.File{
		Listen:       s.addr,
		DataDir:      s.opts.DataDir,
		DatabaseURL:  s.opts.DatabaseURL,
		AdvertiseURL: s.URL,
	})
	if s.opts.TokenTTL > 0 {
		f.TokenTTL = s.opts.TokenTTL.String()
	}
	if s.opts.HeartbeatInterval > 0 {
		f.HeartbeatInterval = s.opts.HeartbeatInterval.String()
	}
	if s.opts.MaxClockSkew > 0 {
		f.MaxClockSkew = s.opts.MaxClockSkew.String()
	}
	if s.opts.RotationOverlap > 0 {
		f.RotationOverlap = s.opts.RotationOverlap.String()
	}
	if s.opts.FleetMaxConcurrency > 0 {
		f.FleetMaxConcurrency = strconv.Itoa(s.opts.FleetMaxConcurrency)
	}
	if s.opts.MaxConcurrentRotations > 0 {
		f.MaxConcurrentRotations = strconv.Itoa(s.opts.MaxConcurrentRotations)
	}
	rate := func(dst *string, v float64) {
		if v > 0 {
			*dst = strconv.FormatFloat(v, 'f', -1, 64)
		}
	}
	burst := func(dst *string, v int) {
		if v > 0 {
			*dst = strconv.Itoa(v)
		}
	}
	rate(&f.StreamAdmissionRate, s.opts.StreamAdmissionRate)
	burst(&f.StreamAdmissionBurst, s.opts.StreamAdmissionBurst)
	rate(&f.ChallengeRatePerSource, s.opts.ChallengeRatePerSource)
	burst(&f.ChallengeBurstPerSource, s.opts.ChallengeBurstPerSource)
	rate(&f.BulkEnrollRate, s.opts.BulkEnrollRate)
	burst(&f.BulkEnrollBurst, s.opts.BulkEnrollBurst)
	f.BulkEnrollSources = s.opts.BulkEnrollSources
	if s.opts.ShutdownReconnectWindow > 0 {
		f.ShutdownReconnectWindow = s.opts.ShutdownReconnectWindow.String()
	}
	cfg, err := f.Resolve()
	if err != nil {
		_ = ln.Close()
		t.Fatalf("cptest: config: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Options{
		Config:               cfg,
		Logger:               s.opts.Logger,
		Now:                  s.opts.Now,
		Listener:             ln,
		ShutdownTimeout:      5 * time.Second,
		HousekeepingInterval: s.opts.HousekeepingInterval,
		RewarmInterval:       s.opts.RewarmInterval,
		ExecGrace:            s.opts.ExecGrace,
		FleetResumeGrace:     s.opts.FleetResumeGrace,
		FleetLeaseDuration:   s.opts.FleetLeaseDuration,
		ReplicaID:            s.opts.ReplicaID,
	})
	if err != nil {
		cancel()
		_ = ln.Close()
		t.Fatalf("cptest: start control plane: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	tok, err := []byte(s.opts.adminToken), error(nil)
	if s.opts.adminToken == "" {
		tok, err = os.ReadFile(srv.AdminTokenPath())
	}
	if err != nil {
		cancel()
		<-done
		t.Fatalf("cptest: read admin token: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(srv.CAPEM()) {
		cancel()
		<-done
		t.Fatalf("cptest: CA PEM does not parse")
	}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}

	s.mu.Lock()
	s.CAPEM = srv.CAPEM()
	s.AdminToken = strings.TrimSpace(string(tok))
	s.Store = srv.Store()
	s.http = &http.Client{Transport: tr}
	s.srv = srv
	s.stop = func() {
		cancel()
		if err := <-done; err != nil {
			s.opts.Logger.Error("cptest: control plane stopped with an error", "err", err)
		}
		tr.CloseIdleConnections()
	}
	s.mu.Unlock()
}

// StartReplica starts another control plane on this one's PostgreSQL database, as a
// second replica behind a load balancer: its own data directory, listener, CA and
// replica id, and the same store, so that a daemon may hold its stream on one
// replica while an operator acts through the other. Its AdminToken is this one's.
// opts is taken as for Start, except that DatabaseURL is this server's.
func (s *Server) StartReplica(t testing.TB, opts Options) *Server {
	t.Helper()
	if s.opts.DatabaseURL == "" {
		t.Fatal("cptest: StartReplica needs a control plane on PostgreSQL (SQLite is one process)")
	}
	opts.DatabaseURL = s.opts.DatabaseURL
	opts.adminToken = s.AdminToken
	return Start(t, opts)
}

// Stop shuts the control plane down gracefully (streams get Disconnect{SHUTDOWN}) and
// waits for it. Safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Restart stops the control plane and starts it again on the same address and data
// directory (and database), as an operator restarting the service would. Fleet runs
// in progress stop with it and resume once it is back: the replica id (host:port)
// is the same, so the new process takes over its own leases at once.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

// RequestTokenRefresh sends RefreshTokenCommand down the node's live stream, as the
// control plane does after a scope change or for a fleet token refresh. It fails if
// the node has no live stream on this control plane or (PostgreSQL) another replica.
func (s *Server) RequestTokenRefresh(nodeID string) error {
	srv, err := s.running()
	if err != nil {
		return err
	}
	return srv.RequestTokenRefresh(context.Background(), nodeID, "requested by the test")
}

// RequestKeyRotation sends RotateKeyCommand{keep_old} down the node's live stream,
// as a fleet key rotation does (keepOld 0: the host's default). It fails if the node
// has no live stream on this control plane or (PostgreSQL) another replica.
func (s *Server) RequestKeyRotation(nodeID string, keepOld time.Duration) error {
	srv, err := s.running()
	if err != nil {
		return err
	}
	return srv.RequestKeyRotation(context.Background(), nodeID, "", keepOld)
}

func (s *Server) running() (*server.Server, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop == nil {
		return nil, errors.New("cptest: the control plane is stopped")
	}
	return s.srv, nil
}

// HTTPClient is an HTTP/2 client that trusts only this control plane's CA.
func (s *Server) HTTPClient() *http.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.http
}

// AdminClient is an EdgeAdminService client sending the bootstrap admin token.
func (s *Server) AdminClient() edgev1connect.EdgeAdminServiceClient {
	return s.AdminClientWithToken(s.AdminToken)
}

// AdminClientWithToken is an EdgeAdminService client sending token ("" sends none).
func (s *Server) AdminClientWithToken(token string) edgev1connect.EdgeAdminServiceClient {
	return edgev1connect.NewEdgeAdminServiceClient(s.HTTPClient(), s.URL, connect.WithInterceptors(bearer(token)))
}

// ClusterClient is a NodeClusterService client (what a daemon uses).
func (s *Server) ClusterClient() edgev1connect.NodeClusterServiceClient {
	return edgev1connect.NewNodeClusterServiceClient(s.HTTPClient(), s.URL)
}

// EnrollmentToken creates an enrollment token with tags through the admin API and
// returns its full text.
func (s *Server) EnrollmentToken(t testing.TB, tags ...string) string {
	t.Helper()
	resp, err := s.AdminClient().CreateEnrollmentToken(context.Background(), connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{
		Tags: tags,
		Ttl:  durationpb.New(15 * time.Minute),
	}))
	if err != nil {
		t.Fatalf("cptest: create enrollment token: %v", err)
	}
	return resp.Msg.GetToken()
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b != "" {
			req.Header().Set("Authorization", "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if b != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// ForEachStore runs fn once with a control plane on SQLite and, when
// AEGIS_TEST_POSTGRES_URL is set, once more on PostgreSQL in a schema of its own
// (dropped at the end). Unset: the PostgreSQL run is not made; set but unreachable:
// the test fails, never skips. Pass the given Options (add to them) to Start.
func ForEachStore(t *testing.T, fn func(t *testing.T, opts Options)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, Options{}) })
	if base := os.Getenv(pgtest.EnvURL); base != "" {
		t.Run("postgres", func(t *testing.T) {
			fn(t, Options{DatabaseURL: pgtest.Fresh(t, base)})
		})
	}
}
