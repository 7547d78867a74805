// Package server owns the control plane process: it opens the store, runs the
// first-start bootstrap, loads the TLS identity, wires the domain services into the
// Connect handlers (which also speak gRPC and gRPC-Web) beside /healthz, /readyz and
// /metrics on one TLS HTTP/2 port, runs housekeeping, and shuts down gracefully:
// every open stream is told Disconnect{SHUTDOWN} with its own reconnect hint, spread so
// the next start can admit the fleet as it returns,
// sessions are cleared, pending last-seen times are flushed, and the store is closed.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/internal/bootstrap"
	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/challenge"
	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/console"
	"github.com/aegis-edge/aegis/controlplane/internal/enroll"
	"github.com/aegis-edge/aegis/controlplane/internal/fleet"
	"github.com/aegis-edge/aegis/controlplane/internal/hosts"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/metrics"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/operators"
	"github.com/aegis-edge/aegis/controlplane/internal/ratelimit"
	"github.com/aegis-edge/aegis/controlplane/internal/revocation"
	"github.com/aegis-edge/aegis/controlplane/internal/rotation"
	"github.com/aegis-edge/aegis/controlplane/internal/rpc"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/throttle"
	"github.com/aegis-edge/aegis/controlplane/internal/tlsca"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const (
	// lastSeenFlushEvery bounds how stale last_seen_at in the database can be.
	lastSeenFlushEvery = 2 * time.Second
	housekeepingEvery  = time.Minute
	// compressMinBytes: smaller messages are sent uncompressed.
	compressMinBytes = 4096
	// DefaultShutdownTimeout bounds a graceful shutdown.
	DefaultShutdownTimeout = 15 * time.Second
	// readMaxBytes is the largest request message read; a larger one is refused.
	readMaxBytes = 1 << 20
)

// Options configures New. Only Config is required.
type Options struct {
	Config config.Config
	Logger *slog.Logger
	// Now is the protocol clock (token expiry, nonces, skew); nil means time.Now.
	// TLS certificates always use the real clock, since clients check them with theirs.
	Now func() time.Time
	// Rand feeds every key, nonce and id; nil means crypto/rand.
	Rand io.Reader
	// Listener, if set, is served instead of listening on Config.Listen.
	Listener net.Listener
	// Registry receives the metrics; nil means a new registry with Go and process
	// collectors.
	Registry *prometheus.Registry
	// ReplicaID names this process in session rows; "" means hostname:port.
	ReplicaID string
	// ShutdownTimeout bounds graceful shutdown; 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// RefreshGrace overrides nodeauth.DefaultRefreshGrace when positive.
	RefreshGrace time.Duration
	// HousekeepingInterval is how often expired blacklist rows, nonces and retired
	// signing keys are purged; 0 means every minute. The signing keys are reloaded
	// from the store every tokens.KeyReloadEvery, or this often if it is shorter.
	HousekeepingInterval time.Duration
	// ExecGrace is how long after its deadline a tool call waits for a result from a
	// reconnecting daemon; 0 means toolcall.DefaultGrace (30s).
	ExecGrace time.Duration
	// FleetResumeGrace is how long a resumed fleet run waits for a host's stream to
	// come back before skipping it as disconnected; 0 means fleet.DefaultResumeGrace.
	FleetResumeGrace time.Duration
	// FleetLeaseDuration is how long a fleet run's lease lasts unrenewed; 0 means
	// fleet.DefaultLeaseDuration.
	FleetLeaseDuration time.Duration
	// ConsolePollInterval is how often the web console's live pages look for
	// changes; 0 means console.DefaultPollInterval.
	ConsolePollInterval time.Duration
	// RewarmInterval is how often a replica re-reads what it caches from the store
	// (the blacklist, and with it revocations) in case a notification was missed; 0
	// means DefaultRewarmInterval. Each wait is shortened by up to a quarter, at
	// random, so replicas do not re-read in step.
	RewarmInterval time.Duration
}

// Server is a running control plane.
type Server struct {
	opts Options
	cfg  config.Config
	log  *slog.Logger
	now  func() time.Time
	ln   net.Listener
	http *http.Server
	// conns accepts ln's connections and serves them (h2 itself, the rest via http).
	conns *connServer
	store store.Store
	// toolParts reassembles tool output forwarded by other replicas.
	toolParts toolParts
	// presence is what each node's stream last proved, learned from every replica.
	presence *session.Presence
	// dirLock is held while serving an SQLite data dir; nil with PostgreSQL.
	dirLock  *dataDirLock
	tls      tlsca.Bundle
	metrics  *metrics.Metrics
	sessions *session.Registry
	lastSeen *session.LastSeen
	auth     *nodeauth.Service
	black    *tokens.Blacklist
	issuer   *tokens.Issuer
	tools    *toolcall.Service
	fleet    *fleet.Engine
	bus      broadcast.Bus
	replica  string
	ready    atomic.Bool
	// metricsLn and metricsHTTP serve /metrics in plain HTTP with --metrics-listen.
	metricsLn   net.Listener
	metricsHTTP *http.Server
	// certs reloads --tls-cert/--tls-key when they change; nil for a generated pair.
	certs *certReloader
	// cluster is the NodeClusterService handler (its shutdown hints).
	cluster *rpc.Cluster
	// began is when New was called (the wall clock's monotonic reading); startTook
	// is how long from then until Run served, in nanoseconds: the shutdown's hints
	// expect the next start to take as long.
	began     time.Time
	startTook atomic.Int64
	// lastDrain is the drain the previous graceful shutdown measured (drain.go);
	// shutdownBegan and shutdownStreams are this process's own, for the next.
	lastDrain       drainRecord
	shutdownBegan   time.Time
	shutdownStreams int
}

// New prepares a control plane: data directory, store (migrated), bootstrap, TLS,
// services and listener. Nothing is served until Run.
func New(ctx context.Context, opts Options) (_ *Server, err error) {
	cfg := opts.Config
	s := &Server{opts: opts, cfg: cfg, log: opts.Logger, now: opts.Now, began: time.Now()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}

	if err := ensureDataDir(cfg.DataDir, s.log, os.Chmod); err != nil {
		return nil, err
	}
	s.lastDrain = readDrainRecord(cfg.DataDir)
	// With SQLite the data dir is the database: one process owns it. PostgreSQL
	// replicas may share one (the same CA and admin token), so it is not locked.
	if cfg.DatabaseKind == config.DatabaseSQLite {
		if s.dirLock, err = lockDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				_ = s.dirLock.release()
			}
		}()
	}
	s.store, err = OpenStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = s.store.Close()
		}
	}()
	if err := bootstrap.Run(ctx, bootstrap.Config{Store: s.store, DataDir: cfg.DataDir, Now: s.now, Rand: rnd, Logger: s.log, AdminToken: cfg.BootstrapToken}); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}

	if cfg.TLSCert != "" {
		s.tls, err = tlsca.Load(cfg.TLSCert, cfg.TLSKey)
	} else {
		s.tls, err = tlsca.Ensure(cfg.DataDir, tlsca.DefaultHosts(tlsHosts(cfg)...), time.Now(), rnd)
	}
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}

	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s.metrics = metrics.New(reg)
	registerBuildInfo(reg)
	reg.MustRegister(&keypolicy.Collector{Store: s.store, Now: s.now, Logger: s.log}) // key age, overdue hosts

	issuer, err := tokens.LoadIssuer(ctx, s.store, cfg.TokenTTL)
	if err != nil {
		return nil, err
	}
	s.issuer = issuer
	s.black = tokens.NewBlacklist(s.metrics)
	if err := s.black.Warm(ctx, s.store, s.now()); err != nil {
		return nil, err
	}

	s.ln = opts.Listener
	if s.ln == nil {
		s.ln, err = net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
	}
	defer func() {
		if err != nil {
			_ = s.ln.Close()
		}
	}()
	s.replica = opts.ReplicaID
	if s.replica == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(s.ln.Addr().String())
		s.replica = host + ":" + port
	}
	// Rows left by an earlier run of this replica that died without cleaning up.
	if err := s.store.CloseReplicaSessions(ctx, s.replica); err != nil {
		return nil, fmt.Errorf("clear stale sessions: %w", err)
	}

	s.sessions = session.NewRegistry(s.metrics)
	if s.bus, err = openBus(ctx, cfg, s.replica, s.log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.bus.Close()
		}
	}()
	// Listening already, so warm the blacklist again: what another replica added
	// since the first warm-up came before this replica could hear of it.
	if s.bus.Shared() {
		if err := s.black.Warm(ctx, s.store, s.now()); err != nil {
			return nil, err
		}
		s.black.OnAdd(s.announceBlacklisted)
	}
	s.lastSeen = session.NewLastSeen(s.store, s.log)
	s.auth = nodeauth.New(nodeauth.Config{
		Store:         s.store,
		Issuer:        issuer,
		Blacklist:     s.black,
		Now:           s.now,
		MaxClockSkew:  cfg.MaxClockSkew,
		RefreshGrace:  opts.RefreshGrace,
		AttestLimiter: ratelimit.New(cfg.AttestPerNode.Rate, cfg.AttestPerNode.Burst),
		Metrics:       s.metrics,
	})
	revoker := revocation.New(revocation.Config{
		Store:     s.store,
		Auth:      s.auth,
		Blacklist: s.black,
		Sessions:  s.sessions,
		Broadcast: s.bus,
		Now:       s.now,
		Logger:    s.log,
	})
	s.tools = toolcall.New(toolcall.Config{
		Store:     s.store,
		Sessions:  clusterStreams{s},
		Elsewhere: s.forwardTool,
		Metrics:   s.metrics,
		Now:       s.now,
		Rand:      rnd,
		Logger:    s.log,
		Grace:     opts.ExecGrace,
	})
	presence := session.NewPresence()
	s.presence = presence
	if s.bus.Shared() {
		presence.OnChange(s.publishPresented)
	}
	s.fleet = fleet.New(fleet.Config{
		Store:          s.store,
		Sessions:       clusterStreams{s},
		Presence:       presence,
		ToolCalls:      s.tools,
		Metrics:        s.metrics,
		Now:            s.now,
		Rand:           rnd,
		Logger:         s.log,
		ReplicaID:      s.replica,
		MaxConcurrency: cfg.FleetMaxConcurrency,
		LeaseDuration:  opts.FleetLeaseDuration,
		ResumeGrace:    resumeGrace(opts.FleetResumeGrace, cfg.ShutdownReconnectWindow),
	})
	enrollSvc := enroll.New(enroll.Config{
		Store:        s.store,
		Issuer:       issuer,
		Now:          s.now,
		Rand:         rnd,
		Metrics:      s.metrics,
		CADER:        s.tls.CADER,
		AdvertiseURL: cfg.AdvertiseURL,
	})
	keyPolicy := keypolicy.New(keypolicy.Config{Store: s.store, Now: s.now, Logger: s.log, Notify: func(nodeID string, max time.Duration) bool {
		// sendCommand reaches the stream on whichever replica holds it.
		return s.sendCommand(context.Background(), nodeID, session.Command{Kind: session.CommandRotationPolicy, MaxKeyAge: max}) == nil
	}})
	cluster := rpc.NewCluster(rpc.ClusterConfig{
		Challenges: challenge.New(challenge.Config{
			Store:         s.store,
			Now:           s.now,
			Rand:          rnd,
			PerSource:     ratelimit.New(cfg.ChallengePerSource.Rate, cfg.ChallengePerSource.Burst),
			PerNode:       ratelimit.New(cfg.AttestPerNode.Rate, cfg.AttestPerNode.Burst),
			BulkSources:   cfg.BulkEnrollSources,
			BulkPerSource: ratelimit.New(cfg.BulkEnroll.Rate, cfg.BulkEnroll.Burst),
		}),
		Enroll: enrollSvc,
		Auth:   s.auth,
		Rotation: rotation.New(rotation.Config{
			Store:        s.store,
			Auth:         s.auth,
			Issuer:       issuer,
			Blacklist:    s.black,
			Now:          s.now,
			MaxClockSkew: cfg.MaxClockSkew,
			Overlap:      cfg.RotationOverlap,
			Metrics:      s.metrics,
		}),
		Revocation:        revoker,
		Sessions:          s.sessions,
		ToolCalls:         s.tools,
		Presence:          presence,
		Throttle:          throttle.New(cfg.MaxConcurrentRotations, s.metrics),
		LastSeen:          s.lastSeen,
		Store:             s.store,
		Metrics:           s.metrics,
		Now:               s.now,
		Logger:            s.log,
		HeartbeatInterval: cfg.HeartbeatInterval,
		ReplicaID:         s.replica,
		Rand:              rnd,
		MaxMessageBytes:   readMaxBytes,
		KeyPolicy:         keyPolicy,
		Admission:         ratelimit.NewAdmission(cfg.StreamAdmission.Rate, cfg.StreamAdmission.Burst),
		AdmissionRate:     cfg.StreamAdmission.Rate,
		ShutdownWindow:    cfg.ShutdownReconnectWindow,
		RestartEstimate:   s.restartEstimate,
	})
	s.cluster = cluster
	admin := rpc.NewAdmin(rpc.AdminConfig{
		Enroll: enrollSvc,
		Hosts: hosts.New(hosts.Config{
			Store:             s.store,
			Now:               s.now,
			HeartbeatInterval: cfg.HeartbeatInterval,
			Latest:            s.lastSeen.Latest,
			Sessions:          clusterStreams{s},
			Logger:            s.log,
		}),
		Revocation: revoker,
		ToolCalls:  s.tools,
		Operators:  operators.New(operators.Config{Store: s.store, Now: s.now, Rand: rnd}),
		Fleet:      s.fleet,
		KeyPolicy:  keyPolicy,
		Store:      s.store,
		Now:        s.now,
		Logger:     s.log,
	})

	metricsI := rpc.MetricsInterceptor{Metrics: s.metrics}
	limits := connect.WithReadMaxBytes(readMaxBytes)
	mux := http.NewServeMux()
	// Replies are mostly a token or an ack, a few hundred bytes: gzip costs more CPU
	// (a compressor reset per message) than the bytes it saves, so compress only
	// messages worth it (listings of thousands of hosts, long command output).
	small := connect.WithCompressMinBytes(compressMinBytes)
	// A request connect-go cannot read never reaches an interceptor; rpc.Unreadable
	// gives its refusal a typed reason, and rpc.ReadInterceptor (first) tells it
	// which requests were read.
	read := rpc.ReadInterceptor{}
	clusterPath, clusterHandler := rpc.NewClusterHandler(cluster, connect.WithInterceptors(read, metricsI), limits, small)
	mux.Handle(clusterPath, rpc.Unreadable(clusterHandler, s.now, readMaxBytes))
	// Metrics outermost, so refused authentications are counted too.
	adminPath, adminHandler := edgev1connect.NewEdgeAdminServiceHandler(admin, connect.WithInterceptors(read, metricsI, rpc.AuthInterceptor{Store: s.store}), limits, small)
	mux.Handle(adminPath, rpc.Unreadable(adminHandler, s.now, readMaxBytes))
	// The web console calls the same handler in process, so it is scoped and
	// role-checked exactly as the API.
	ui, err := console.New(console.Config{API: adminHandler, Now: s.now, Rand: rnd, Logger: s.log, PollInterval: opts.ConsolePollInterval})
	if err != nil {
		return nil, err
	}
	mux.Handle("/ui/", ui)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	s.mountIntrospection(mux)
	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if cfg.MetricsListen == "" {
		mux.Handle("GET /metrics", metricsHandler)
	} else if err := s.listenMetrics(metricsHandler); err != nil {
		return nil, err
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{s.tls.Certificate},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}
	if cfg.TLSCert != "" {
		s.certs = newCertReloader(cfg.TLSCert, cfg.TLSKey, s.tls.Certificate, s.log)
		tlsConf.Certificates, tlsConf.GetCertificate = nil, s.certs.GetCertificate
	}

	s.http = &http.Server{
		Handler:           mux,
		TLSConfig:         tlsConf,
		HTTP2:             http2Config(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	s.http.RegisterOnShutdown(ui.Close)
	if s.conns, err = newConnServer(s.ln, tlsConf, s.http, context.WithoutCancel(ctx), s.log); err != nil {
		return nil, fmt.Errorf("configure HTTP/2: %w", err)
	}
	return s, nil
}

// http2Config sizes HTTP/2 for what a daemon's connection carries: one long-lived
// stream of small envelopes (heartbeats every 10s, a few hundred bytes each), not
// bulk transfers. Each connection otherwise keeps a 4 KiB HPACK table for the
// headers it sends, and may be made to buffer 1 MiB per stream.
func http2Config() *http.HTTP2Config {
	return &http.HTTP2Config{
		// The server's own HPACK table: responses carry a handful of fixed headers.
		// (The decoder's stays at the default: a client encodes its first requests
		// before it has read our settings, and a smaller table would refuse them
		// with COMPRESSION_ERROR.)
		MaxEncoderHeaderTableSize: 256,
		// The protocol minimum: the framer's read buffer never grows past a frame
		// this size; larger messages (tool output, host listings) arrive in several.
		MaxReadFrameSize: 16 << 10,
		// Flow-control windows bound what a client can make the server buffer before
		// the handler reads it. Still ample for a 1 MiB message or streamed output.
		MaxReceiveBufferPerStream:     256 << 10,
		MaxReceiveBufferPerConnection: 512 << 10,
	}
}

// Addr is the address being served.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is https://<listen address>.
func (s *Server) URL() string { return "https://" + s.ln.Addr().String() }

// CAPEM is the CA certificate clients pin.
func (s *Server) CAPEM() []byte { return s.tls.CAPEM }

// Store is the server's store (closed once Run returns).
func (s *Server) Store() store.Store { return s.store }

// AdminTokenPath is where the bootstrap admin token was written.
func (s *Server) AdminTokenPath() string {
	return filepath.Join(s.cfg.DataDir, bootstrap.AdminTokenFile)
}

// RequestTokenRefresh asks the node's live stream to re-attest now
// (RefreshTokenCommand), on this replica or the one holding it.
// session.ErrNoStream if the node has no stream anywhere.
func (s *Server) RequestTokenRefresh(ctx context.Context, nodeID, reason string) error {
	return s.sendCommand(ctx, nodeID, session.Command{Kind: session.CommandRefreshToken, Reason: reason})
}

// RequestKeyRotation asks the node's live stream, on this replica or the one
// holding it, to rotate its key (RotateKeyCommand); keepOld 0 leaves the archive
// retention to the host.
func (s *Server) RequestKeyRotation(ctx context.Context, nodeID, fleetRunID string, keepOld time.Duration) error {
	return s.sendCommand(ctx, nodeID, session.Command{Kind: session.CommandRotateKey, FleetRunID: fleetRunID, KeepOld: keepOld})
}

// Run serves until ctx ends, then shuts down gracefully. It returns nil after a clean
// shutdown.
func (s *Server) Run(ctx context.Context) error {
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(6)
	go func() { defer wg.Done(); s.bus.Run(bg, replicaEvents{s}) }()
	go func() { defer wg.Done(); s.rewarmLoop(bg) }()
	go func() { defer wg.Done(); s.keepSessionsLoop(bg) }()
	go func() { defer wg.Done(); s.lastSeen.Run(bg, lastSeenFlushEvery) }()
	go func() { defer wg.Done(); s.housekeeping(bg) }()
	// Resumes the runs left running by an earlier process (this replica's own
	// after a restart) and any whose replica died.
	go func() { defer wg.Done(); s.fleet.Run(bg) }()

	serveErr := make(chan error, 2)
	go func() { serveErr <- s.conns.Serve() }()
	if s.metricsHTTP != nil {
		go func() {
			if err := s.metricsHTTP.Serve(s.metricsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("metrics listener: %w", err)
			}
		}()
	}
	s.ready.Store(true)
	took := time.Since(s.began)
	s.startTook.Store(int64(took))
	s.log.Info("control plane serving", "url", s.URL(), "advertise_url", s.cfg.AdvertiseURL, "data_dir", s.cfg.DataDir, "database", s.cfg.DatabaseKind, "replica", s.replica, "start_took", took.Round(time.Millisecond))

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		runErr = fmt.Errorf("serve: %w", err)
	}
	shutErr := s.shutdown()
	stopBG()
	wg.Wait()
	fin := s.finish()
	return errors.Join(runErr, shutErr, fin)
}

// shutdown tells every stream to reconnect elsewhere or later, then stops the HTTP
// server once the handlers have returned.
func (s *Server) shutdown() error {
	s.ready.Store(false)
	timeout := s.opts.ShutdownTimeout
	if timeout == 0 {
		timeout = DefaultShutdownTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	n := s.sessions.Len()
	s.shutdownBegan, s.shutdownStreams = time.Now(), n
	s.log.Info("shutting down", "open_streams", n, "expected_restart", s.restartEstimate(n).Round(time.Millisecond))
	// Fleet drivers stop first: a host must not be judged disconnected because this
	// replica is closing its stream. Their runs stay running for the next replica
	// (or this one, restarted) to resume.
	s.fleet.Stop()
	began := time.Now()
	if err := s.sessions.Shutdown(ctx, s.cluster.ShutdownHints()); err != nil {
		s.log.Warn("streams did not all close in time", "err", err)
	} else {
		s.log.Info("streams closed", "streams", n, "took", time.Since(began).Round(time.Millisecond), "first_reconnect_after", s.cluster.ShutdownHints()(0, n).Round(time.Millisecond))
	}
	// With the streams gone no result can arrive here; release the waiting Execs.
	s.tools.Shutdown()
	if err := s.conns.Shutdown(ctx); err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	// Metrics last: a scrape during shutdown still sees the streams closing.
	if s.metricsHTTP != nil {
		if err := s.metricsHTTP.Shutdown(ctx); err != nil {
			_ = s.metricsHTTP.Close()
		}
	}
	return nil
}

// restartEstimate is how long a restart of this control plane closing streams
// streams is expected to take before the next process serves (drain.go).
func (s *Server) restartEstimate(streams int) time.Duration {
	return expectedRestart(time.Duration(s.startTook.Load()), s.lastDrain, streams)
}

// finish writes what is still in memory and closes the store.
func (s *Server) finish() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	if err := s.lastSeen.Flush(ctx); err != nil {
		errs = append(errs, fmt.Errorf("flush last_seen_at: %w", err))
	}
	if err := s.store.CloseReplicaSessions(ctx, s.replica); err != nil {
		errs = append(errs, fmt.Errorf("clear sessions: %w", err))
	}
	s.bus.Close()
	if err := s.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	if s.shutdownStreams > 0 {
		// The next start expects a drain as long per stream as this one.
		d := drainRecord{Streams: s.shutdownStreams, Seconds: time.Since(s.shutdownBegan).Seconds()}
		if err := writeDrainRecord(s.cfg.DataDir, d); err != nil {
			s.log.Warn("could not record the drain for the next start's reconnect hints", "err", err)
		} else {
			s.log.Info("drained", "streams", d.Streams, "seconds", d.Seconds)
		}
	}
	if err := s.dirLock.release(); err != nil {
		errs = append(errs, fmt.Errorf("release data dir lock: %w", err))
	}
	s.log.Info("control plane stopped")
	return errors.Join(errs...)
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		http.Error(w, "not ready: starting or shutting down", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.log.Warn("readyz: store ping failed", "err", err)
		http.Error(w, "not ready: database unreachable", http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// housekeeping purges what has expired anyway: blacklist rows, nonces and retired
// signing keys in the store, and the in-memory caches. More often, it reloads the
// signing keys, so a `controlplane keys rotate` run beside this server takes effect
// without a restart.
func (s *Server) housekeeping(ctx context.Context) {
	every := s.opts.HousekeepingInterval
	if every <= 0 {
		every = housekeepingEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	keys := time.NewTicker(min(every, tokens.KeyReloadEvery))
	defer keys.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-keys.C:
			s.reloadSigningKeys(ctx)
			continue
		case <-t.C:
		}
		now := s.now()
		if kids, err := tokens.PurgeSigningKeys(ctx, s.store, now, s.cfg.TokenTTL, s.cfg.MaxClockSkew); err != nil && ctx.Err() == nil {
			s.log.Warn("purge retired signing keys", "err", err)
		} else if len(kids) > 0 {
			s.log.Info("deleted retired token-signing keys: every token they signed has expired", "kids", kids)
			s.reloadSigningKeys(ctx)
		}
		if _, err := s.store.PurgeBlacklist(ctx, now); err != nil && ctx.Err() == nil {
			s.log.Warn("purge token blacklist", "err", err)
		}
		if _, err := s.store.PurgeNonces(ctx, now); err != nil && ctx.Err() == nil {
			s.log.Warn("purge nonces", "err", err)
		}
		s.black.Purge(now)
		s.auth.Purge(now)
		s.issuer.PurgeVerified(now)
	}
}

// reloadSigningKeys picks up keys added, retired or deleted by another process.
func (s *Server) reloadSigningKeys(ctx context.Context) {
	changed, err := s.issuer.Reload(ctx)
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Warn("reload token-signing keys (still using the ones loaded before)", "err", err)
	case changed:
		s.log.Info("token-signing key rotated: new tokens are signed with the new key", "kid", s.issuer.ActiveKID())
	}
}

func ensureDataDir(dir string, log *slog.Logger, chmod func(string, os.FileMode) error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data dir %s is not a directory", dir)
	}
	// The directory holds the CA key, the admin token and (with SQLite) the signing
	// keys: as ssh does with ~/.ssh, it is not used while others can read it. This
	// process may tighten a directory it owns; otherwise it refuses to start.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := chmod(dir, perm&^0o077); err != nil {
			return fmt.Errorf("data dir %s has mode %04o and holds keys; it must not be accessible by group or others, and it could not be tightened (%v): chmod 700 it", dir, perm, err)
		}
		log.Warn("data dir was accessible by group or others; it holds keys: tightened it", "dir", dir, "was", fmt.Sprintf("%04o", perm), "now", fmt.Sprintf("%04o", perm&^0o077))
	}
	return nil
}

// tlsHosts are the names the generated server certificate must cover beyond the
// defaults: the advertise URL's host and a specific listen host.
func tlsHosts(cfg config.Config) []string {
	var out []string
	if u, err := url.Parse(cfg.AdvertiseURL); err == nil && u.Hostname() != "" {
		out = append(out, u.Hostname())
	}
	if h, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		switch h {
		case "", "0.0.0.0", "::":
		default:
			out = append(out, h)
		}
	}
	return out
}

// resumeGrace is how long a fleet run resumed after a restart waits for a host's
// stream: set, or long enough to outwait the reconnect hints a shutting-down server
// spreads over the shutdown window (a host told to come back at 30s must not be
// skipped as disconnected at 15s), plus fleet.DefaultResumeGrace for the reconnect
// itself.
func resumeGrace(set, shutdownWindow time.Duration) time.Duration {
	if set > 0 {
		return set
	}
	return shutdownWindow + fleet.DefaultResumeGrace
}
