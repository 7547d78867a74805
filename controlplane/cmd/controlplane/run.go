package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/aegis-edge/aegis/api/buildinfo"
	"io"
	"log/slog"

	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/server"
	"github.com/urfave/cli/v2"
)

// exitError carries an exit status out of the cli app without it printing anything.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run is the whole program, minus signal handling, so tests can drive it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	if err := app.RunContext(ctx, args); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		fmt.Fprintf(stderr, "controlplane: %v\n", err)
		return 1
	}
	return 0
}

// flagLayer is one flag and where its value goes in config.File.
type flagLayer struct {
	flag *cli.StringFlag
	set  func(f *config.File, v string)
}

func serveFlags() []flagLayer {
	d := config.Defaults()
	str := func(name, env, def, usage string, set func(*config.File, string)) flagLayer {
		return flagLayer{flag: &cli.StringFlag{Name: name, EnvVars: []string{env}, Value: def, Usage: usage}, set: set}
	}
	return []flagLayer{
		str("listen", "AEGIS_LISTEN", d.Listen, "`ADDR` (host:port) to serve TLS on; Connect, gRPC, gRPC-Web, /healthz, /readyz and /metrics share it",
			func(f *config.File, v string) { f.Listen = v }),
		str("data-dir", "AEGIS_DATA_DIR", d.DataDir, "`DIR` for ca.crt, ca.key, server.crt, server.key, admin.token and the SQLite database (created 0700)",
			func(f *config.File, v string) { f.DataDir = v }),
		str("database-url", "AEGIS_DATABASE_URL", "", "`URL` of the database: postgres://USER@HOST:PORT/DB, sqlite://PATH, or empty for DIR/aegis.db",
			func(f *config.File, v string) { f.DatabaseURL = v }),
		str("tls-cert", "AEGIS_TLS_CERT", "", "`FILE` with the server certificate chain (leaf first, CA last); default: generated into DIR",
			func(f *config.File, v string) { f.TLSCert = v }),
		str("tls-key", "AEGIS_TLS_KEY", "", "`FILE` with the key for --tls-cert",
			func(f *config.File, v string) { f.TLSKey = v }),
		str("advertise-url", "AEGIS_ADVERTISE_URL", "", "`URL` hosts use to reach this server, written into enrollment tokens (default https://ADDR)",
			func(f *config.File, v string) { f.AdvertiseURL = v }),
		str("heartbeat-interval", "AEGIS_HEARTBEAT_INTERVAL", d.HeartbeatInterval, "how often daemons heartbeat (`DURATION`); a host unseen for 3x this is Disconnected",
			func(f *config.File, v string) { f.HeartbeatInterval = v }),
		str("token-ttl", "AEGIS_TOKEN_TTL", d.TokenTTL, "lifetime of issued NodeSecurityTokens (`DURATION`)",
			func(f *config.File, v string) { f.TokenTTL = v }),
		str("max-clock-skew", "AEGIS_MAX_CLOCK_SKEW", d.MaxClockSkew, "largest accepted difference between an envelope's timestamp and server time (`DURATION`)",
			func(f *config.File, v string) { f.MaxClockSkew = v }),
		str("rotation-overlap", "AEGIS_ROTATION_OVERLAP", d.RotationOverlap, "how long after a key rotation a live stream may still send envelopes signed by the previous key (`DURATION`); new connections with the old key are refused at once",
			func(f *config.File, v string) { f.RotationOverlap = v }),
		str("fleet-max-concurrency", "AEGIS_FLEET_MAX_CONCURRENCY", d.FleetMaxConcurrency, "most hosts in flight at once in one fleet run (`N`); a parallel run moves in waves of this many",
			func(f *config.File, v string) { f.FleetMaxConcurrency = v }),
		str("max-concurrent-rotations", "AEGIS_MAX_CONCURRENT_ROTATIONS", d.MaxConcurrentRotations, "most key rotations and attestations in progress at once, server-wide (`N`); more wait their turn",
			func(f *config.File, v string) { f.MaxConcurrentRotations = v }),
		str("database-max-conns", "AEGIS_DATABASE_MAX_CONNS", "", "PostgreSQL connection pool size per replica (`N`); default: the URL's pool_max_conns, else 32. Rotations are concurrent transactions, so a burst uses up to min(N, --max-concurrent-rotations) connections; keep N x replicas below the server's max_connections",
			func(f *config.File, v string) { f.DatabaseMaxConns = v }),
		str("challenge-rate-per-source", "AEGIS_CHALLENGE_RATE_PER_SOURCE", d.ChallengeRatePerSource, "challenges (one per enrollment or attestation) a second from one source address (`RATE`); over it a host is refused rate_limited with a retry-after it honours",
			func(f *config.File, v string) { f.ChallengeRatePerSource = v }),
		str("challenge-burst-per-source", "AEGIS_CHALLENGE_BURST_PER_SOURCE", d.ChallengeBurstPerSource, "challenges one source address may ask for at once before --challenge-rate-per-source applies (`N`)",
			func(f *config.File, v string) { f.ChallengeBurstPerSource = v }),
		str("attest-rate-per-node", "AEGIS_ATTEST_RATE_PER_NODE", d.AttestRatePerNode, "challenges and attestations a second for one node (`RATE`); a healthy daemon attests once per token lifetime",
			func(f *config.File, v string) { f.AttestRatePerNode = v }),
		str("attest-burst-per-node", "AEGIS_ATTEST_BURST_PER_NODE", d.AttestBurstPerNode, "attestations one node may make at once before --attest-rate-per-node applies (`N`)",
			func(f *config.File, v string) { f.AttestBurstPerNode = v }),
		str("bulk-enroll-sources", "AEGIS_BULK_ENROLL_SOURCES", "", "addresses or CIDRs (`LIST`, comma-separated) that enroll many hosts at once, e.g. a bastion or an autoscaling group's NAT: they get --bulk-enroll-rate instead of --challenge-rate-per-source; every other source keeps the tight limit",
			func(f *config.File, v string) { f.BulkEnrollSources = v }),
		str("bulk-enroll-rate", "AEGIS_BULK_ENROLL_RATE", d.BulkEnrollRate, "challenges a second from each --bulk-enroll-sources address (`RATE`); the default enrolls 10,000 hosts from one bastion in about 35s",
			func(f *config.File, v string) { f.BulkEnrollRate = v }),
		str("bulk-enroll-burst", "AEGIS_BULK_ENROLL_BURST", d.BulkEnrollBurst, "challenges a bulk source may ask for at once (`N`)",
			func(f *config.File, v string) { f.BulkEnrollBurst = v }),
		str("stream-admission-rate", "AEGIS_STREAM_ADMISSION_RATE", d.StreamAdmissionRate, "new daemon streams admitted a second (`RATE`), always and above all after a restart; a stream over it is refused busy with a slot to come back at, so a reconnect storm becomes a queue (the default admits 10,000 daemons in about 35s; after a graceful restart they come back over about 42s, at 80% of it)",
			func(f *config.File, v string) { f.StreamAdmissionRate = v }),
		str("stream-admission-burst", "AEGIS_STREAM_ADMISSION_BURST", d.StreamAdmissionBurst, "new streams admitted at once before --stream-admission-rate applies (`N`)",
			func(f *config.File, v string) { f.StreamAdmissionBurst = v }),
		str("shutdown-reconnect-window", "AEGIS_SHUTDOWN_RECONNECT_WINDOW", d.ShutdownReconnectWindow, "on shutdown every stream is told Disconnect with its own reconnect_after: from 1s after the restart this server expects (its drain as the last shutdown measured it, then a start as long as its own), spread evenly at 80% of --stream-admission-rate over at most this (`DURATION`), so the fleet comes back below the pace the next start admits (the default holds 10,000 daemons at the default rate: 42s)",
			func(f *config.File, v string) { f.ShutdownReconnectWindow = v }),
		str("log-level", "AEGIS_LOG_LEVEL", d.LogLevel, "`LEVEL`: debug, info, warn or error",
			func(f *config.File, v string) { f.LogLevel = v }),
		str("log-format", "AEGIS_LOG_FORMAT", d.LogFormat, "`FORMAT` of the log on stderr: text, or json (one object per line, for log collectors)",
			func(f *config.File, v string) { f.LogFormat = v }),
		str("metrics-listen", "AEGIS_METRICS_LISTEN", "", "`ADDR` (host:port) to serve /metrics on in plain HTTP, e.g. 0.0.0.0:9090 for a Prometheus scraper without the CA; then /metrics leaves the TLS port",
			func(f *config.File, v string) { f.MetricsListen = v }),
		str("bootstrap-token-file", "AEGIS_BOOTSTRAP_TOKEN_FILE", "", "`FILE` holding the admin API token (\"<16 hex>.<32 hex>\") to install on first start instead of writing a generated DIR/admin.token; on Kubernetes a mounted Secret",
			func(f *config.File, v string) { f.BootstrapTokenFile = v }),
	}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	layers := serveFlags()
	flags := []cli.Flag{&cli.StringFlag{
		Name:    "config",
		EnvVars: []string{"AEGIS_CONTROLPLANE_CONFIG"},
		Usage:   "optional YAML `FILE` with the same settings (listen, data_dir, database_url, tls_cert, tls_key, advertise_url, heartbeat_interval, token_ttl, max_clock_skew, rotation_overlap, fleet_max_concurrency, max_concurrent_rotations, challenge_rate_per_source, challenge_burst_per_source, attest_rate_per_node, attest_burst_per_node, bulk_enroll_sources, bulk_enroll_rate, bulk_enroll_burst, stream_admission_rate, stream_admission_burst, shutdown_reconnect_window, log_level, log_format, metrics_listen, bootstrap_token_file); environment and flags override it",
	}}
	configFlag := flags[0]
	flags = append(flags, &cli.BoolFlag{
		Name:  "check-config",
		Usage: "validate the settings, the TLS files and the bootstrap token, print the result and exit without serving (a dry start for CI and Helm charts)",
	})
	for _, l := range layers {
		flags = append(flags, l.flag)
	}
	return &cli.App{
		Name:  "controlplane",
		Usage: "the Aegis Edge control plane: enrollment, node tokens, live daemon streams, operator API",
		// --version (and -v): version, commit and Go toolchain.
		Version:   buildinfo.Get().String(),
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed once, by run.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{{
			Name:  "serve",
			Usage: "run the control plane",
			Description: `Serves NodeClusterService (daemons) and EdgeAdminService (operators) over TLS with
HTTP/2 on one port, speaking Connect, gRPC and gRPC-Web.

On first start DIR gets a generated CA (ca.crt, ca.key) and server certificate, the
default tenant, a token-signing key, the SQLite database (unless --database-url is
given) and admin.token (mode 0600): a bootstrap admin API token for the first operator:

   aegisctl login --server https://127.0.0.1:7443 --token-file DIR/admin.token --ca-file DIR/ca.crt

Every flag can also be set through its AEGIS_* environment variable (flags win) or
the --config file. SIGINT/SIGTERM shut down gracefully: connected daemons are told to
reconnect after a delay of their own, from about when the next start is expected to
serve, spread at 80% of --stream-admission-rate over at most --shutdown-reconnect-window.

Rate limits (see docs/deployment.md, "Rate limits and bulk enrollment"): every refusal
is typed (rate_limited, busy) and says when to retry; daemons and enrollments honour it.
New streams are admitted at --stream-admission-rate; challenges are limited per source
address and per node; --bulk-enroll-sources names a bastion or NAT that enrolls many
hosts at once, without turning the limits off for anyone else.

Memory: the Go garbage collector runs with GOGC=25 unless the environment sets GOGC
(Go's default is 100): most of the memory is long-lived state per connected daemon,
and 25 keeps about 30 KiB less per daemon for a few percent of CPU. While little is
live (a few hundred daemons), GOGC is raised so that at least 64 MiB may be allocated
between collections. GOGC and GOMEMLIMIT work as for any Go program.

Examples:
   controlplane serve
   controlplane serve --listen 0.0.0.0:7443 --advertise-url https://cp.example.com:7443
   controlplane serve --database-url postgres://aegis@db:5432/aegis?sslmode=require
   controlplane serve --bulk-enroll-sources 10.0.4.7,10.8.0.0/16`,
			Flags: flags,
			Action: func(c *cli.Context) error {
				return serve(c, layers, stderr)
			},
		}, keysCommand(stdout), migrateCommand(stdout, configFlag, layers)},
	}
}

func serve(c *cli.Context, layers []flagLayer, stderr io.Writer) error {
	if c.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments, got %q: see controlplane serve --help", c.Args().First())
	}
	cfg, err := resolveConfig(c, layers)
	if err != nil {
		return err
	}
	if c.Bool("check-config") {
		if err := server.CheckConfig(cfg); err != nil {
			return fmt.Errorf("invalid configuration:\n%w", err)
		}
		fmt.Fprintf(c.App.Writer, "configuration ok: listen %s, database %s, data dir %s\n", cfg.Listen, cfg.DatabaseKind, cfg.DataDir)
		return nil
	}
	logger := newLogger(stderr, cfg)
	tuneGC(c.Context, logger)
	srv, err := server.New(c.Context, server.Options{Config: cfg, Logger: logger})
	if err != nil {
		return err
	}
	return srv.Run(c.Context)
}

// newLogger is the process's one logger, text or JSON as --log-format says.
func newLogger(w io.Writer, cfg config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// resolveConfig merges defaults, the --config file and the flags (with their
// environment variables) that c defines, and validates the result once.
func resolveConfig(c *cli.Context, layers []flagLayer) (config.Config, error) {
	var file config.File
	if p := c.String("config"); p != "" {
		f, err := config.LoadFile(p)
		if err != nil {
			return config.Config{}, err
		}
		file = f
	}
	// Flags and their environment variables form one layer; IsSet is true for both.
	var given config.File
	for _, l := range layers {
		if c.IsSet(l.flag.Name) {
			l.set(&given, c.String(l.flag.Name))
		}
	}
	cfg, err := config.Merge(config.Defaults(), file, given).Resolve()
	if err != nil {
		return config.Config{}, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}
