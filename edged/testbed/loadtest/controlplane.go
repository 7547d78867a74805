// Package loadtest is aegis-loadtest: capacity figures a platform team can reproduce
// on its own hardware, as pgbench gives them for PostgreSQL. It starts a real control
// plane (the controlplane binary from bin/, on a fresh SQLite file or on a schema of
// its own in a PostgreSQL database), enrolls real hosts against it, drives one
// scenario, and measures a reference on the same machine and database in the same
// run, so that figures from noisy machines compare as ratios.
//
// It never touches data it did not create: on PostgreSQL it works in a schema it
// creates (and drops afterwards) and refuses a URL that already names one.
package loadtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/edged/cpclient"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/jackc/pgx/v5"
)

// ErrBadInput: the run was refused before anything was changed.
var ErrBadInput = errors.New("bad input")

// database is where the control plane keeps its state for one run.
type database struct {
	// url is what the control plane is given ("" = SQLite in its data dir).
	url string
	// postgres is the base URL (without the run's search_path) when on PostgreSQL.
	postgres string
	schema   string
	// sqlitePath is the control plane's SQLite file when on SQLite.
	sqlitePath string
}

func (d database) kind() string {
	if d.postgres != "" {
		return "postgres"
	}
	return "sqlite"
}

// openDatabase prepares the run's database: nothing for SQLite (the control plane
// creates its file), a fresh schema for PostgreSQL. The URL must not choose a schema
// itself: the tool works only in one it made.
func openDatabase(ctx context.Context, rawURL, dataDir string) (database, func(), error) {
	if rawURL == "" {
		return database{sqlitePath: filepath.Join(dataDir, "aegis.db")}, func() {}, nil
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return database{}, nil, fmt.Errorf("%w: --database-url must be a postgres:// URL (or empty for a fresh SQLite file)", ErrBadInput)
	}
	if u.Query().Has("search_path") {
		return database{}, nil, fmt.Errorf("%w: --database-url names a search_path; the tool creates a schema of its own in the database and works only there, so leave search_path out", ErrBadInput)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, rawURL)
	if err != nil {
		return database{}, nil, fmt.Errorf("%w: cannot reach the database at --database-url (%s): %v", ErrBadInput, redact(u), pgErrText(err))
	}
	defer conn.Close(context.Background())
	var b [5]byte
	_, _ = rand.Read(b[:])
	schema := "aegis_loadtest_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(cctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return database{}, nil, fmt.Errorf("%w: create a scratch schema in %s: %v", ErrBadInput, redact(u), pgErrText(err))
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, rawURL)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	}
	return database{url: u.String(), postgres: rawURL, schema: schema}, drop, nil
}

// redact shows a database URL without its password.
func redact(u *url.URL) string {
	c := *u
	c.RawQuery = ""
	if c.User != nil {
		c.User = url.User(c.User.Username())
	}
	return c.String()
}

// pgErrText keeps pgx's message but never a password it might echo.
func pgErrText(err error) string {
	s := err.Error()
	if i := strings.Index(s, "password="); i >= 0 {
		return s[:i] + "password=…"
	}
	return s
}

// controlPlane is the control plane under test, run as its own process.
type controlPlane struct {
	URL        string
	DataDir    string
	AdminToken string
	CA         *x509.Certificate
	HTTP       *http.Client

	// MetricsURL is where the control plane's /metrics is scraped.
	MetricsURL string
	// External is a control plane the tool did not start (--server): it is never
	// stopped or restarted by the tool, and its CPU and memory come from /metrics.
	External bool

	opts startOptions
	addr string
	cmd  *exec.Cmd
	done chan error
	logs *tailBuffer
}

// startOptions configure startControlPlane.
type startOptions struct {
	Binary   string
	DataDir  string
	Database database
	// Extra flags for `controlplane serve`.
	Args []string
	Log  io.Writer
	// Addr is the host:port to listen on; empty picks a free port.
	Addr string
}

// findBinary finds the controlplane binary: the flag's value, else beside this
// executable (make build puts both in bin/), else on PATH.
func findBinary(flag string) (string, error) {
	if flag != "" {
		if _, err := os.Stat(flag); err != nil {
			return "", fmt.Errorf("%w: --controlplane-bin %s: %v", ErrBadInput, flag, err)
		}
		return flag, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "controlplane")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("controlplane")
	if err != nil {
		return "", fmt.Errorf("%w: no controlplane binary beside aegis-loadtest or on PATH; run `make build` or pass --controlplane-bin", ErrBadInput)
	}
	return p, nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startControlPlane runs `controlplane serve` and waits until it is ready.
func startControlPlane(ctx context.Context, o startOptions) (*controlPlane, error) {
	addr := o.Addr
	if addr == "" {
		var err error
		if addr, err = freePort(); err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
	}
	args := []string{"serve", "--listen", addr, "--data-dir", o.DataDir, "--log-level", "warn"}
	if o.Database.url != "" {
		args = append(args, "--database-url", o.Database.url)
	}
	args = append(args, o.Args...)
	cmd := exec.Command(o.Binary, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logs := &tailBuffer{max: 64 << 10}
	var w io.Writer = logs
	if o.Log != nil {
		w = io.MultiWriter(logs, o.Log)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", o.Binary, err)
	}
	cp := &controlPlane{URL: "https://" + addr, MetricsURL: "https://" + addr + "/metrics", DataDir: o.DataDir, opts: o, addr: addr, cmd: cmd, done: make(chan error, 1), logs: logs}
	go func() { cp.done <- cmd.Wait() }()
	if err := cp.waitReady(ctx); err != nil {
		cp.Stop()
		return nil, err
	}
	return cp, nil
}

func (cp *controlPlane) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-cp.done:
			cp.done <- err
			return fmt.Errorf("the control plane exited before it was ready (%v); its last output:\n%s", err, cp.logs.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the control plane was not ready within 60s; its last output:\n%s", cp.logs.String())
		}
		if cp.HTTP == nil {
			tok, err1 := os.ReadFile(filepath.Join(cp.DataDir, "admin.token"))
			caPEM, err2 := os.ReadFile(filepath.Join(cp.DataDir, "ca.crt"))
			if err1 != nil || err2 != nil {
				continue
			}
			ca, err := keystore.ParseCertPEM(caPEM)
			if err != nil {
				continue
			}
			cp.AdminToken, cp.CA = strings.TrimSpace(string(tok)), ca
			cp.HTTP = cpclient.NewHTTPClient(ca)
		}
		if cp.ready(ctx) {
			return nil
		}
	}
}

// Admin is an EdgeAdminService client with the bootstrap admin token.
func (cp *controlPlane) Admin() edgev1connect.EdgeAdminServiceClient {
	tok := cp.AdminToken
	return edgev1connect.NewEdgeAdminServiceClient(cp.HTTP, cp.URL, connect.WithInterceptors(connect.UnaryInterceptorFunc(
		func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				req.Header().Set("Authorization", "Bearer "+tok)
				return next(ctx, req)
			}
		}), bearerStreams(tok)))
}

// bearerStreams sets the admin token on streaming calls (WatchFleetRun).
type bearerStreams string

func (b bearerStreams) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }
func (b bearerStreams) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return conn
	}
}
func (b bearerStreams) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// connectExternal is a control plane someone else runs (--server): the tool trusts
// only caFile's CA for it and calls the admin API with tokenFile's token.
func connectExternal(ctx context.Context, serverURL, caFile, tokenFile, metricsURL string) (*controlPlane, error) {
	u, err := url.Parse(serverURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%w: --server %q: want https://HOST:PORT", ErrBadInput, serverURL)
	}
	if caFile == "" || tokenFile == "" {
		return nil, fmt.Errorf("%w: --server needs --ca-file (the control plane's CA certificate) and --token-file (an admin API token)", ErrBadInput)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: --ca-file: %v", ErrBadInput, err)
	}
	ca, err := keystore.ParseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: --ca-file %s: %v", ErrBadInput, caFile, err)
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("%w: --token-file: %v", ErrBadInput, err)
	}
	cp := &controlPlane{
		URL: strings.TrimRight(u.String(), "/"), AdminToken: strings.TrimSpace(string(tok)), CA: ca,
		HTTP: cpclient.NewHTTPClient(ca), External: true, MetricsURL: metricsURL,
	}
	if cp.MetricsURL == "" {
		cp.MetricsURL = cp.URL + "/metrics"
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := cp.Admin().WhoAmI(cctx, connect.NewRequest(&edgev1.WhoAmIRequest{})); err != nil {
		return nil, fmt.Errorf("%w: --server %s with --token-file: %v", ErrBadInput, cp.URL, err)
	}
	return cp, nil
}

// Restart stops the control plane gracefully and starts it again on the same
// address, data and flags; it returns once the new process is ready, with how long
// the old one took to exit (its drain) and the new one to be ready.
func (cp *controlPlane) Restart(ctx context.Context) (stopped, started time.Duration, err error) {
	if cp.External {
		return 0, 0, errors.New("the tool does not restart a control plane it did not start")
	}
	t0 := time.Now()
	cp.Stop()
	stopped = time.Since(t0)
	o := cp.opts
	o.Addr = cp.addr
	next, err := startControlPlane(ctx, o)
	if err != nil {
		return stopped, 0, err
	}
	cp.cmd, cp.done, cp.logs = next.cmd, next.done, next.logs
	return stopped, time.Since(t0) - stopped, nil
}

// Stop stops the control plane gracefully (SIGTERM), then hard after 20s.
func (cp *controlPlane) Stop() {
	if cp.External || cp.cmd.Process == nil {
		return
	}
	_ = cp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-cp.done:
		cp.done <- err
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-cp.cmd.Process.Pid, syscall.SIGKILL)
		cp.done <- <-cp.done
	}
}

// ProcessCPU is the control plane's CPU time so far (user+system): from /proc when
// the tool started it, else from its /metrics.
func (cp *controlPlane) ProcessCPU() (time.Duration, error) {
	if cp.External {
		m, err := cp.Metrics(context.Background())
		if err != nil {
			return 0, err
		}
		return time.Duration(m.get("process_cpu_seconds_total") * float64(time.Second)), nil
	}
	return procCPU(cp.cmd.Process.Pid)
}

// RSS is the control plane's resident memory in bytes: from /proc when the tool
// started it (cheap enough to sample often), else from its /metrics.
func (cp *controlPlane) RSS(ctx context.Context) (float64, error) {
	if cp.External {
		m, err := cp.Metrics(ctx)
		if err != nil {
			return 0, err
		}
		return m.get("process_resident_memory_bytes"), nil
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cp.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			var kib float64
			fmt.Sscan(f[1], &kib)
			return kib * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// Metrics scrapes the control plane's /metrics.
func (cp *controlPlane) Metrics(ctx context.Context) (samples, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cp.MetricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := cp.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", cp.MetricsURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", cp.MetricsURL, resp.Status)
	}
	return parseSamples(resp.Body)
}

// samples are a scrape's values summed over labels, by metric name; a name with
// labels is also kept whole (`name{a="b"}`).
type samples map[string]float64

func (s samples) get(name string) float64 { return s[name] }

func parseSamples(r io.Reader) (samples, error) {
	out := samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err != nil {
			continue
		}
		series := line[:i]
		name := series
		if j := strings.IndexByte(series, '{'); j >= 0 {
			name = series[:j]
			out[series] += v
		}
		out[name] += v
	}
	return out, sc.Err()
}

func procCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after the last ')' are fixed.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clkTck, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(t.b)))
	for sc.Scan() {
		out.WriteString("  " + sc.Text() + "\n")
	}
	return out.String()
}
