// Package config owns the control plane's settings: the layered File form (defaults,
// an optional YAML file, AEGIS_* environment variables, flags — later layers win) and
// the validated runtime Config that the rest of the program uses. Input is merged once
// and validated once, here; nothing downstream re-parses a setting.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// File is the settings as written by a person: in a YAML file, the environment or
// flags. Every field is a string so that "not given" (empty) is distinguishable from
// a zero value, and so that each layer parses the same way.
type File struct {
	Listen            string `yaml:"listen"`
	DataDir           string `yaml:"data_dir"`
	DatabaseURL       string `yaml:"database_url"`
	TLSCert           string `yaml:"tls_cert"`
	TLSKey            string `yaml:"tls_key"`
	AdvertiseURL      string `yaml:"advertise_url"`
	HeartbeatInterval string `yaml:"heartbeat_interval"`
	TokenTTL          string `yaml:"token_ttl"`
	MaxClockSkew      string `yaml:"max_clock_skew"`
	RotationOverlap   string `yaml:"rotation_overlap"`
	LogLevel          string `yaml:"log_level"`
	// FleetMaxConcurrency caps the hosts in flight in one fleet run (a parallel
	// run's wave size).
	FleetMaxConcurrency string `yaml:"fleet_max_concurrency"`
	// MaxConcurrentRotations caps rotations and attestations in progress at once,
	// server-wide.
	MaxConcurrentRotations string `yaml:"max_concurrent_rotations"`
	// DatabaseMaxConns sizes the PostgreSQL connection pool ("" = the URL's
	// pool_max_conns, else the store's default, postgres.DefaultMaxConns).
	DatabaseMaxConns string `yaml:"database_max_conns"`
	// MetricsListen, if set, serves /metrics on its own plain-HTTP listener (and no
	// longer on the TLS port), so a Prometheus scraper needs no CA.
	MetricsListen string `yaml:"metrics_listen"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`
	// BootstrapTokenFile holds the admin API token to install on first start instead
	// of minting admin.token (Kubernetes: a mounted Secret).
	BootstrapTokenFile string `yaml:"bootstrap_token_file"`
	// Rate limits (docs/deployment.md, "Rate limits and bulk enrollment"): challenges
	// per source address, challenges and attestations per node, the larger per-source
	// allowance of named bulk-enrollment sources, and the pace at which new streams
	// are admitted. Rates are per second, bursts whole numbers.
	ChallengeRatePerSource  string `yaml:"challenge_rate_per_source"`
	ChallengeBurstPerSource string `yaml:"challenge_burst_per_source"`
	AttestRatePerNode       string `yaml:"attest_rate_per_node"`
	AttestBurstPerNode      string `yaml:"attest_burst_per_node"`
	BulkEnrollSources       string `yaml:"bulk_enroll_sources"`
	BulkEnrollRate          string `yaml:"bulk_enroll_rate"`
	BulkEnrollBurst         string `yaml:"bulk_enroll_burst"`
	StreamAdmissionRate     string `yaml:"stream_admission_rate"`
	StreamAdmissionBurst    string `yaml:"stream_admission_burst"`
	// ShutdownReconnectWindow is the window over which a shutting-down server spreads
	// the reconnect_after hints it sends its streams.
	ShutdownReconnectWindow string `yaml:"shutdown_reconnect_window"`
}

// Defaults are the documented defaults (DESIGN §9).
func Defaults() File {
	return File{
		Listen:            "127.0.0.1:7443",
		DataDir:           "./aegis-data",
		HeartbeatInterval: "10s",
		TokenTTL:          "1h",
		MaxClockSkew:      "60s",
		RotationOverlap:   "60s",
		LogLevel:          "info",
		LogFormat:         "text",
		// A parallel fleet run of thousands still moves in waves of this many.
		FleetMaxConcurrency: "100",
		// About what one PostgreSQL primary sustains with good latency (DESIGN §7:
		// ~6,600 rotations/s with 32 in flight).
		MaxConcurrentRotations: "64",
		// A host asks for one challenge per enrollment or attestation: 50/s per address
		// blunts a flood, and a bulk enrollment names its source instead.
		ChallengeRatePerSource:  "50",
		ChallengeBurstPerSource: "200",
		AttestRatePerNode:       "1",
		AttestBurstPerNode:      "10",
		// 10,000 hosts from one bastion in about 35s, within what the server sustains.
		BulkEnrollRate:  "300",
		BulkEnrollBurst: "300",
		// 10,000 daemons back within about 45s of a restart (DESIGN §7: 60s): told
		// to come back over 42s, at 80% of the admission rate.
		StreamAdmissionRate:     "300",
		StreamAdmissionBurst:    "300",
		ShutdownReconnectWindow: "45s",
	}
}

// Merge overlays layers in order; a non-empty field of a later layer wins.
func Merge(layers ...File) File {
	var out File
	for _, l := range layers {
		set := func(dst *string, v string) {
			if v != "" {
				*dst = v
			}
		}
		set(&out.Listen, l.Listen)
		set(&out.DataDir, l.DataDir)
		set(&out.DatabaseURL, l.DatabaseURL)
		set(&out.TLSCert, l.TLSCert)
		set(&out.TLSKey, l.TLSKey)
		set(&out.AdvertiseURL, l.AdvertiseURL)
		set(&out.HeartbeatInterval, l.HeartbeatInterval)
		set(&out.TokenTTL, l.TokenTTL)
		set(&out.MaxClockSkew, l.MaxClockSkew)
		set(&out.RotationOverlap, l.RotationOverlap)
		set(&out.LogLevel, l.LogLevel)
		set(&out.FleetMaxConcurrency, l.FleetMaxConcurrency)
		set(&out.MaxConcurrentRotations, l.MaxConcurrentRotations)
		set(&out.DatabaseMaxConns, l.DatabaseMaxConns)
		set(&out.MetricsListen, l.MetricsListen)
		set(&out.LogFormat, l.LogFormat)
		set(&out.BootstrapTokenFile, l.BootstrapTokenFile)
		set(&out.ChallengeRatePerSource, l.ChallengeRatePerSource)
		set(&out.ChallengeBurstPerSource, l.ChallengeBurstPerSource)
		set(&out.AttestRatePerNode, l.AttestRatePerNode)
		set(&out.AttestBurstPerNode, l.AttestBurstPerNode)
		set(&out.BulkEnrollSources, l.BulkEnrollSources)
		set(&out.BulkEnrollRate, l.BulkEnrollRate)
		set(&out.BulkEnrollBurst, l.BulkEnrollBurst)
		set(&out.StreamAdmissionRate, l.StreamAdmissionRate)
		set(&out.StreamAdmissionBurst, l.StreamAdmissionBurst)
		set(&out.ShutdownReconnectWindow, l.ShutdownReconnectWindow)
	}
	return out
}

// LoadFile reads a YAML settings file. Unknown keys are an error: a misspelt setting
// silently ignored is worse than a refusal to start.
func LoadFile(path string) (File, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("read config file: %w", err)
	}
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	// An empty file decodes as io.EOF: it simply sets nothing.
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return File{}, fmt.Errorf("config file %s: %w", path, err)
	}
	return f, nil
}

// Database kinds.
const (
	DatabaseSQLite   = "sqlite"
	DatabasePostgres = "postgres"
)

// Config is the validated runtime configuration.
type Config struct {
	Listen  string
	DataDir string
	// DatabaseKind is DatabaseSQLite or DatabasePostgres.
	DatabaseKind string
	// DatabaseURL is the postgres URL, or the SQLite file path.
	DatabaseURL string
	// TLSCert and TLSKey are both empty (generate into DataDir) or both set.
	TLSCert, TLSKey string
	// AdvertiseURL is the base URL put inside enrollment tokens.
	AdvertiseURL      string
	HeartbeatInterval time.Duration
	TokenTTL          time.Duration
	MaxClockSkew      time.Duration
	// RotationOverlap is how long after a key rotation a stream that was
	// authenticated before it may still send envelopes under the previous key.
	RotationOverlap time.Duration
	LogLevel        slog.Level
	// FleetMaxConcurrency caps the hosts in flight in one fleet run.
	FleetMaxConcurrency int
	// MaxConcurrentRotations caps rotations and attestations in progress at once.
	MaxConcurrentRotations int
	// DatabaseMaxConns is the PostgreSQL pool size given by --database-max-conns
	// (0: the URL's pool_max_conns, else postgres.DefaultMaxConns).
	DatabaseMaxConns int
	// MetricsListen is "" (metrics on the TLS port) or HOST:PORT for plain HTTP.
	MetricsListen string
	// LogJSON selects slog's JSON handler.
	LogJSON bool
	// BootstrapToken is the content of --bootstrap-token-file, "" when not given.
	BootstrapToken string
	// Limits: each a rate per second and a burst.
	ChallengePerSource, AttestPerNode, BulkEnroll, StreamAdmission Limit
	// BulkEnrollSources get BulkEnroll instead of ChallengePerSource.
	BulkEnrollSources []netip.Prefix
	// ShutdownReconnectWindow spreads the reconnect_after hints of a shutdown.
	ShutdownReconnectWindow time.Duration
}

// Limit is a token bucket's settings.
type Limit struct {
	Rate  float64
	Burst int
}

// Resolve validates f (already merged over Defaults) into a Config. Each error names
// the flag to fix and what a good value looks like; none echoes a database password.
func (f File) Resolve() (Config, error) {
	var c Config
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	host, port, err := net.SplitHostPort(f.Listen)
	if err != nil {
		bad("invalid --listen %q: want HOST:PORT, e.g. 127.0.0.1:7443", f.Listen)
	} else if p, perr := strconv.Atoi(port); perr != nil || p < 0 || p > 65535 {
		bad("invalid --listen %q: port must be a number from 0 to 65535", f.Listen)
	} else if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		bad("invalid --listen %q: %q is neither an IP address nor a host name", f.Listen, host)
	}
	c.Listen = f.Listen

	if f.DataDir == "" {
		bad("--data-dir must not be empty")
	} else if abs, err := filepath.Abs(f.DataDir); err != nil {
		bad("invalid --data-dir %q: %v", f.DataDir, err)
	} else {
		c.DataDir = abs
	}

	switch u := f.DatabaseURL; {
	case u == "":
		c.DatabaseKind, c.DatabaseURL = DatabaseSQLite, filepath.Join(c.DataDir, "aegis.db")
	case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
		if _, err := url.Parse(u); err != nil {
			bad("invalid --database-url: not a parseable postgres:// URL")
		}
		c.DatabaseKind, c.DatabaseURL = DatabasePostgres, u
	case strings.HasPrefix(u, "sqlite://"), strings.HasPrefix(u, "sqlite:"):
		p := strings.TrimPrefix(strings.TrimPrefix(u, "sqlite:"), "//")
		if p == "" {
			bad("invalid --database-url %q: want sqlite://PATH", u)
		}
		c.DatabaseKind, c.DatabaseURL = DatabaseSQLite, p
	default:
		scheme := "(none)"
		if i := strings.Index(u, "://"); i > 0 {
			scheme = u[:i]
		} else if i := strings.Index(u, ":"); i > 0 {
			scheme = u[:i]
		}
		bad("unsupported --database-url scheme %q: use postgres://USER@HOST:PORT/DB, sqlite://PATH, or leave it empty for an SQLite file in --data-dir", scheme)
	}

	if (f.TLSCert == "") != (f.TLSKey == "") {
		bad("--tls-cert and --tls-key go together: give both, or neither to use a generated CA")
	}
	c.TLSCert, c.TLSKey = f.TLSCert, f.TLSKey

	c.AdvertiseURL = f.AdvertiseURL
	if c.AdvertiseURL == "" && err == nil {
		c.AdvertiseURL = "https://" + net.JoinHostPort(advertiseHost(host), port)
	}
	if f.AdvertiseURL != "" {
		u, err := url.Parse(f.AdvertiseURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			bad("invalid --advertise-url %q: want https://HOST[:PORT], the address hosts use to reach this server", f.AdvertiseURL)
		} else {
			c.AdvertiseURL = strings.TrimSuffix(f.AdvertiseURL, "/")
		}
	}

	dur := func(flag, v string, lo, hi time.Duration, dst *time.Duration) {
		d, err := time.ParseDuration(v)
		if err != nil {
			bad("invalid --%s %q: want a duration such as 10s, 5m or 1h", flag, v)
			return
		}
		if d < lo || d > hi {
			bad("invalid --%s %s: must be between %s and %s", flag, d, lo, hi)
			return
		}
		*dst = d
	}
	dur("heartbeat-interval", f.HeartbeatInterval, 50*time.Millisecond, time.Hour, &c.HeartbeatInterval)
	dur("token-ttl", f.TokenTTL, time.Minute, 7*24*time.Hour, &c.TokenTTL)
	dur("max-clock-skew", f.MaxClockSkew, time.Second, time.Hour, &c.MaxClockSkew)
	// Short overlaps are allowed for tests and tight environments; a daemon switches
	// keys right after the swap, so the overlap only has to cover envelopes in flight.
	dur("rotation-overlap", f.RotationOverlap, 100*time.Millisecond, time.Hour, &c.RotationOverlap)

	count := func(flag, v string, lo, hi int, dst *int) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < lo || n > hi {
			bad("invalid --%s %q: want a whole number from %d to %d", flag, v, lo, hi)
			return
		}
		*dst = n
	}
	limit := func(rateFlag, rate, burstFlag, burst string, dst *Limit) {
		r, err := strconv.ParseFloat(strings.TrimSpace(rate), 64)
		if err != nil || r <= 0 || r > 1e6 {
			bad("invalid --%s %q: want a rate per second above 0, e.g. 50 or 0.5", rateFlag, rate)
		}
		b, err := strconv.Atoi(strings.TrimSpace(burst))
		if err != nil || b < 1 || b > 1000000 {
			bad("invalid --%s %q: want a whole number from 1 to 1000000", burstFlag, burst)
		}
		*dst = Limit{Rate: r, Burst: b}
	}
	limit("challenge-rate-per-source", f.ChallengeRatePerSource, "challenge-burst-per-source", f.ChallengeBurstPerSource, &c.ChallengePerSource)
	limit("attest-rate-per-node", f.AttestRatePerNode, "attest-burst-per-node", f.AttestBurstPerNode, &c.AttestPerNode)
	limit("bulk-enroll-rate", f.BulkEnrollRate, "bulk-enroll-burst", f.BulkEnrollBurst, &c.BulkEnroll)
	limit("stream-admission-rate", f.StreamAdmissionRate, "stream-admission-burst", f.StreamAdmissionBurst, &c.StreamAdmission)
	for _, src := range strings.Split(f.BulkEnrollSources, ",") {
		src = strings.TrimSpace(src)
		if src == "" {
			continue
		}
		if p, err := netip.ParsePrefix(src); err == nil {
			c.BulkEnrollSources = append(c.BulkEnrollSources, p.Masked())
		} else if a, err := netip.ParseAddr(src); err == nil {
			c.BulkEnrollSources = append(c.BulkEnrollSources, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		} else {
			bad("invalid --bulk-enroll-sources entry %q: want an address or a CIDR, e.g. 10.0.4.7 or 10.0.0.0/16, comma-separated", src)
		}
	}
	dur("shutdown-reconnect-window", f.ShutdownReconnectWindow, time.Second, time.Hour, &c.ShutdownReconnectWindow)

	count("fleet-max-concurrency", f.FleetMaxConcurrency, 1, 100000, &c.FleetMaxConcurrency)
	count("max-concurrent-rotations", f.MaxConcurrentRotations, 1, 100000, &c.MaxConcurrentRotations)
	if f.DatabaseMaxConns != "" {
		count("database-max-conns", f.DatabaseMaxConns, 1, 10000, &c.DatabaseMaxConns)
	}

	switch strings.ToLower(f.LogLevel) {
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "info", "":
		c.LogLevel = slog.LevelInfo
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		bad("invalid --log-level %q: want debug, info, warn or error", f.LogLevel)
	}

	if f.MetricsListen != "" {
		if _, p, err := net.SplitHostPort(f.MetricsListen); err != nil {
			bad("invalid --metrics-listen %q: want HOST:PORT, e.g. 0.0.0.0:9090", f.MetricsListen)
		} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			bad("invalid --metrics-listen %q: port must be a number from 0 to 65535", f.MetricsListen)
		} else if f.MetricsListen == f.Listen && n != 0 {
			bad("--metrics-listen %q is the --listen address: give metrics a port of their own, or leave it empty to serve /metrics on the TLS port", f.MetricsListen)
		}
	}
	c.MetricsListen = f.MetricsListen

	switch strings.ToLower(f.LogFormat) {
	case "text", "":
	case "json":
		c.LogJSON = true
	default:
		bad("invalid --log-format %q: want text or json", f.LogFormat)
	}

	if p := f.BootstrapTokenFile; p != "" {
		raw, err := os.ReadFile(p)
		switch {
		case err != nil:
			bad("--bootstrap-token-file: %v: mount the Secret holding the token there, or drop the flag to have admin.token generated", err)
		case strings.TrimSpace(string(raw)) == "":
			bad("--bootstrap-token-file %s is empty: it must hold one admin API token, \"<16 hex>.<32 hex>\"", p)
		default:
			c.BootstrapToken = strings.TrimSpace(string(raw))
		}
	}

	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// advertiseHost picks the host to put in the default advertise URL: a wildcard
// listen address is not reachable as such, so the machine's name stands in.
func advertiseHost(listenHost string) string {
	switch listenHost {
	case "", "0.0.0.0", "::":
		if h, err := os.Hostname(); err == nil && h != "" {
			return h
		}
		return "localhost"
	}
	return listenHost
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
