package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/rotation"
	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/durationpb"
)

// maxHosts bounds --hosts: each host is a state directory and, in fleet, a live
// stream; past this the tool measures the machine's file table, not the product.
const maxHosts = 50000

// Run is aegis-loadtest's main; it returns the exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := App(stdout, stderr)
	if err := app.RunContext(ctx, args); err != nil {
		fmt.Fprintf(stderr, "aegis-loadtest: %v\n", err)
		if errors.Is(err, ErrBadInput) {
			return 2
		}
		return 1
	}
	return 0
}

// startedFlags choose the control plane the tool starts itself.
var startedFlags = []cli.Flag{
	&cli.StringFlag{Name: "database-url", Usage: "run the control plane on this PostgreSQL database (`URL`); the tool creates a schema of its own there and drops it afterwards. Default: a fresh SQLite file in a temporary directory"},
	&cli.StringFlag{Name: "controlplane-bin", Usage: "the controlplane binary to start (`PATH`; default: beside aegis-loadtest, else on PATH)"},
	&cli.StringFlag{Name: "work-dir", Usage: "`DIR` for the control plane's data and the hosts' state (default: a new temporary directory, removed afterwards)"},
	&cli.StringSliceFlag{Name: "server-arg", Usage: "extra flag for `controlplane serve` (repeat: --server-arg=--database-max-conns=64)"},
	&cli.BoolFlag{Name: "verbose", Usage: "copy the control plane's log to stderr"},
}

// outputFlags are every scenario's.
var outputFlags = []cli.Flag{
	&cli.IntFlag{Name: "hosts", Value: 1000, Usage: "enroll `N` hosts (each a real state directory made by the real enroll flow)"},
	&cli.StringFlag{Name: "hosts-dir", Usage: "`DIR` for the simulated hosts' state directories (default: a new directory in /dev/shm when it exists, else under the work dir). Every host here shares one disk, which no real fleet does: on disk, the hosts' own fsyncs (7 per rotation each) bound a fleet run long before the control plane does. The control plane's data always stays on disk"},
	&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "text, or json: the last line of stdout is one JSON object with the figures"},
}

// externalFlags point the connection scenarios at a control plane someone else
// runs, so that it is measured alone, on its own machine.
var externalFlags = []cli.Flag{
	&cli.StringFlag{Name: "server", Usage: "measure the control plane at `URL` (https://HOST:PORT) instead of starting one; needs --ca-file and --token-file. The tool enrolls --hosts hosts there (tagged loadtest-RUN) and revokes and deletes them afterwards"},
	&cli.StringFlag{Name: "ca-file", Usage: "with --server: the control plane's CA certificate (`FILE`, PEM)"},
	&cli.StringFlag{Name: "token-file", Usage: "with --server: an admin API token (`FILE`) to make enrollment tokens, revoke and delete the run's hosts"},
	&cli.StringFlag{Name: "metrics-url", Usage: "with --server: where its /metrics is (`URL`; default: --server's /metrics; set it when the server uses --metrics-listen)"},
	&cli.BoolFlag{Name: "keep-hosts", Usage: "with --server: leave the run's hosts enrolled"},
}

// rampFlag paces the first connection of the daemons (the storm is the restart).
var rampFlag = &cli.Float64Flag{Name: "ramp", Value: 250, Usage: "start `R` daemons per second for the first connection (0: all at once)"}

func flags(groups ...[]cli.Flag) []cli.Flag {
	var out []cli.Flag
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// App is the command-line definition (also used to render its help).
func App(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "aegis-loadtest",
		Usage: "capacity figures for an Aegis Edge control plane, each beside a reference measured in the same run",
		Description: `Starts a real control plane (bin/controlplane) on a fresh SQLite file, or on a
schema of its own in the PostgreSQL database --database-url names, enrolls --hosts
real hosts against it, runs one scenario and prints progress on stderr and a summary
on stdout. Every figure comes with a reference measured by the tool on the same
machine (and database) in the same run: compare reference_ratio across machines,
not raw rates. It never runs against data it did not create.

Examples:
   aegis-loadtest rotate --hosts 1000 --concurrency 1,8,32,128
   aegis-loadtest rotate --database-url postgres://postgres@127.0.0.1:5432/test --concurrency 32 -o json
   aegis-loadtest fleet --hosts 2000 --batch 100
   aegis-loadtest connect --hosts 10000 --heartbeat-interval 2s -o json
   aegis-loadtest storm --hosts 10000
   aegis-loadtest enroll --hosts 10000 --concurrency 64
   aegis-loadtest connect --server https://cp.example:7443 --ca-file ca.crt --token-file admin.token --hosts 2000

The connection scenarios (connect, storm, enroll) can measure a control plane
someone else runs (--server): its memory and CPU then come from its /metrics.
A run of 10,000 daemons holds 10,000 TCP connections on each side: raise the
open-file limit (ulimit -n) of both processes above that.`,
		Writer:    stdout,
		ErrWriter: stderr,
		Commands: []*cli.Command{
			{
				Name:  "rotate",
				Usage: "hosts call RotateEdgeKey concurrently, at each --concurrency level",
				Description: `Each level runs --duration with C workers; a worker takes a host, rotates its key
(the daemon's request: new-key proof of possession inside an envelope signed by the
old key with the current token), and gives the host back. The reference is a plain
3-statement transaction (update a row, read it, insert a history row) at the same
concurrency on the same database, run in alternation with the rotations (--rounds),
so that both figures come from the same minutes of a machine whose speed drifts;
the spread of the rounds' own ratios is printed beside the level's.`,
				Flags: flags([]cli.Flag{
					&cli.StringFlag{Name: "concurrency", Value: "1,8,32,128", Usage: "`C[,C...]` rotations in flight, one level each"},
					&cli.DurationFlag{Name: "duration", Value: 10 * time.Second, Usage: "how long each level rotates (`DURATION`)"},
					&cli.IntFlag{Name: "rounds", Value: 5, Usage: "split each level into `K` rounds, each --duration/K of rotations then half as long of the reference"},
				}, outputFlags, startedFlags),
				Action: func(c *cli.Context) error { return runScenario(c, "rotate") },
			},
			{
				Name:  "fleet",
				Usage: "a keys.rotate fleet run over every host, in waves of --batch",
				Description: `Runs a real edged agent for every host in this process (one shared HTTP/2
client), waits until all are Connected, then starts a keys.rotate fleet run
(rolling=B, continue on error) and follows it to its summary. It then checks that
every host has exactly one result, rotated, and that the control plane and the
host's own node.key agree on a new key. The reference is the machine's Ed25519
sign+verify rate on every core.`,
				Flags: flags([]cli.Flag{
					&cli.IntFlag{Name: "batch", Value: 100, Usage: "hosts per wave (`B`: rolling=B)"},
					&cli.DurationFlag{Name: "deadline", Value: 60 * time.Second, Usage: "per-host deadline of the run (`DURATION`)"},
					&cli.IntFlag{Name: "runs", Value: 1, Usage: "rotate the fleet `N` times in a row"},
				}, outputFlags, startedFlags),
				Action: func(c *cli.Context) error { return runScenario(c, "fleet") },
			},
			{
				Name:  "connect",
				Usage: "N daemons connect and heartbeat: memory per daemon, heartbeats validated per second, CPU per heartbeat, revocation latency",
				Description: `Enrolls --hosts hosts, measures the control plane (RSS, heap, goroutines from
/proc and its /metrics) and an Ed25519 verify on one core, then runs a real edged
agent per host in this process, each with a connection of its own, until all are
Connected. After --settle it measures for --duration: heartbeats validated per
second (aegis_edge_heartbeats_total) and the control plane's CPU per heartbeat
(process_cpu_seconds_total), also counted in Ed25519 verifies. Then it revokes
--revoke hosts one at a time while the rest heartbeat and times each from the
RevokeHost call to the daemon's stream closing as revoked (p50, p99).`,
				Flags: flags([]cli.Flag{
					&cli.DurationFlag{Name: "duration", Value: 20 * time.Second, Usage: "how long the steady state is measured (`DURATION`)"},
					&cli.DurationFlag{Name: "settle", Value: 5 * time.Second, Usage: "wait `DURATION` after the last daemon connected before measuring"},
					&cli.DurationFlag{Name: "heartbeat-interval", Value: 2 * time.Second, Usage: "the control plane's heartbeat interval (`DURATION`) when the tool starts it (10,000 daemons at 2s: 5,000 heartbeats/s)"},
					&cli.IntFlag{Name: "revoke", Value: 20, Usage: "revoke `K` hosts at the end and time each (0: none)"},
					rampFlag,
				}, outputFlags, startedFlags, externalFlags),
				Action: func(c *cli.Context) error { return runScenario(c, "connect") },
			},
			{
				Name:  "storm",
				Usage: "with N daemons connected, the control plane restarts: time until all are back, attempts per daemon, peak memory",
				Description: `Connects --hosts daemons as connect does, then restarts the control plane it
started (SIGTERM, then the same binary, flags, address and data) or, with
--server, waits while the operator restarts it. It reports the time from the
control plane being ready again to every daemon Connected on a new stream, what
each daemon sent meanwhile (stream attempts, attestations, challenges), the
control plane's peak RSS against its steady state before the restart, and its CPU.
The daemons keep edged's own reconnect timers.`,
				Flags: flags([]cli.Flag{
					&cli.DurationFlag{Name: "settle", Value: 5 * time.Second, Usage: "wait `DURATION` after all connected before the restart, and after all are back before reading the peak"},
					&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "give up when the daemons are not all back within `DURATION`"},
					&cli.DurationFlag{Name: "heartbeat-interval", Value: 2 * time.Second, Usage: "the control plane's heartbeat interval (`DURATION`) when the tool starts it"},
					rampFlag,
				}, outputFlags, startedFlags, externalFlags),
				Action: func(c *cli.Context) error { return runScenario(c, "storm") },
			},
			{
				Name:  "enroll",
				Usage: "N hosts enroll from one source: enrollments per second",
				Description: `Makes --hosts enrollment tokens (timed apart: that is the operator's side), then
enrolls a host with each through the real enroll flow, --concurrency at a time,
all from this machine: one source, as a bastion or an image-baking job is. A
refusal by a rate limit is waited out as the control plane says and counted.
Raise the control plane's limits for bulk enrollment with --server-arg (see
controlplane serve --help).`,
				Flags: flags([]cli.Flag{
					&cli.IntFlag{Name: "concurrency", Value: 32, Usage: "enrollments in flight (`C`)"},
				}, outputFlags, startedFlags, externalFlags),
				Action: func(c *cli.Context) error { return runScenario(c, "enroll") },
			},
		},
	}
}

type settings struct {
	hosts       int
	levels      []int
	rounds      int
	duration    time.Duration
	batch       int
	deadline    time.Duration
	runs        int
	json        bool
	binary      string
	workDir     string
	databaseURL string
	serverArgs  []string
	verbose     bool
	hostsDir    string

	// connect, storm, enroll
	settle            time.Duration
	stormTimeout      time.Duration
	heartbeat         time.Duration
	revoke            int
	ramp              float64
	enrollConcurrency int
	server            string
	caFile, tokenFile string
	metricsURL        string
	keepHosts         bool
}

// parse checks every flag before anything is created.
func parse(c *cli.Context, scenario string) (settings, error) {
	s := settings{
		hosts: c.Int("hosts"), duration: c.Duration("duration"), batch: c.Int("batch"),
		deadline: c.Duration("deadline"), runs: c.Int("runs"), rounds: c.Int("rounds"), databaseURL: c.String("database-url"),
		workDir: c.String("work-dir"), serverArgs: c.StringSlice("server-arg"), verbose: c.Bool("verbose"),
		hostsDir: c.String("hosts-dir"), settle: c.Duration("settle"), stormTimeout: c.Duration("timeout"),
		heartbeat: c.Duration("heartbeat-interval"), revoke: c.Int("revoke"), ramp: c.Float64("ramp"), server: c.String("server"),
		caFile: c.String("ca-file"), tokenFile: c.String("token-file"), metricsURL: c.String("metrics-url"),
		keepHosts: c.Bool("keep-hosts"), enrollConcurrency: 16,
	}
	bad := func(format string, args ...any) (settings, error) {
		return settings{}, fmt.Errorf("%w: "+format, append([]any{ErrBadInput}, args...)...)
	}
	switch c.String("output") {
	case "text":
	case "json":
		s.json = true
	default:
		return bad("-o %q: want text or json", c.String("output"))
	}
	if s.hosts < 1 || s.hosts > maxHosts {
		return bad("--hosts %d: want 1 to %d", s.hosts, maxHosts)
	}
	if scenario == "rotate" {
		for _, f := range strings.Split(c.String("concurrency"), ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return bad("--concurrency %q: want positive numbers separated by commas, e.g. 1,8,32", c.String("concurrency"))
			}
			if n > s.hosts {
				return bad("--concurrency %d is more than --hosts %d: a host rotates one key at a time, so C needs at least C hosts", n, s.hosts)
			}
			s.levels = append(s.levels, n)
		}
		if s.duration < 100*time.Millisecond {
			return bad("--duration %v: want at least 100ms", s.duration)
		}
		if s.rounds < 1 || s.duration/time.Duration(s.rounds) < 50*time.Millisecond {
			return bad("--rounds %d: want 1 or more, each round at least 50ms of --duration %v", s.rounds, s.duration)
		}
	}
	if scenario == "fleet" {
		if s.batch < 1 {
			return bad("--batch %d: want at least 1", s.batch)
		}
		if s.deadline < time.Second {
			return bad("--deadline %v: want at least 1s", s.deadline)
		}
		if s.runs < 1 {
			return bad("--runs %d: want at least 1", s.runs)
		}
	}
	switch scenario {
	case "connect", "storm":
		if s.settle < 0 {
			return bad("--settle %v: want 0 or more", s.settle)
		}
		if s.ramp < 0 {
			return bad("--ramp %v: want 0 (all at once) or more", s.ramp)
		}
		if s.heartbeat < 100*time.Millisecond {
			return bad("--heartbeat-interval %v: want at least 100ms", s.heartbeat)
		}
	}
	if scenario == "connect" {
		if s.duration < time.Second {
			return bad("--duration %v: want at least 1s (heartbeats are counted over it)", s.duration)
		}
		if !c.IsSet("revoke") {
			s.revoke = min(s.revoke, s.hosts)
		}
		if s.revoke < 0 || s.revoke > s.hosts {
			return bad("--revoke %d: want 0 to --hosts (%d)", s.revoke, s.hosts)
		}
	}
	if scenario == "storm" && s.stormTimeout < time.Second {
		return bad("--timeout %v: want at least 1s", s.stormTimeout)
	}
	if scenario == "enroll" {
		if s.enrollConcurrency = c.Int("concurrency"); s.enrollConcurrency < 1 || s.enrollConcurrency > 1024 {
			return bad("--concurrency %d: want 1 to 1024", c.Int("concurrency"))
		}
	}
	if s.server != "" {
		if s.databaseURL != "" || len(s.serverArgs) > 0 || c.String("controlplane-bin") != "" {
			return bad("--server measures a control plane someone else runs: --database-url, --server-arg and --controlplane-bin are for one the tool starts")
		}
		return s, nil
	}
	for _, f := range []string{"ca-file", "token-file", "metrics-url", "keep-hosts"} {
		if c.IsSet(f) {
			return bad("--%s goes with --server", f)
		}
	}
	bin, err := findBinary(c.String("controlplane-bin"))
	if err != nil {
		return settings{}, err
	}
	s.binary = bin
	return s, nil
}

func runScenario(c *cli.Context, scenario string) error {
	s, err := parse(c, scenario)
	if err != nil {
		return err
	}
	ctx := c.Context
	p := &progress{w: c.App.ErrWriter}

	if s.server != "" {
		cp, err := connectExternal(ctx, s.server, s.caFile, s.tokenFile, s.metricsURL)
		if err != nil {
			return err
		}
		if _, err := cp.Metrics(ctx); err != nil {
			return fmt.Errorf("%w: %v (set --metrics-url when the server serves /metrics on --metrics-listen)", ErrBadInput, err)
		}
		dir, err := os.MkdirTemp("", "aegis-loadtest-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		var b [4]byte
		_, _ = rand.Read(b[:])
		tag := "loadtest-" + hex.EncodeToString(b[:])
		p.say("measuring the control plane at %s; this run's hosts are tagged %s", cp.URL, tag)
		sum := Summary{Scenario: scenario, Database: "external"}
		err = runOn(ctx, c, s, cp, database{}, dir, tag, p, &sum)
		if !s.keepHosts {
			p.say("revoking and deleting the %s hosts", tag)
			if cerr := removeHosts(context.WithoutCancel(ctx), cp, tag); cerr != nil && err == nil {
				err = cerr
			}
		}
		return err
	}

	dir := s.workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "aegis-loadtest-*"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	db, drop, err := openDatabase(ctx, s.databaseURL, filepath.Join(dir, "cp"))
	if err != nil {
		return err
	}
	defer drop()

	var log io.Writer
	if s.verbose {
		log = c.App.ErrWriter
	}
	args := s.serverArgs
	if scenario == "connect" || scenario == "storm" {
		args = append([]string{"--heartbeat-interval", s.heartbeat.String()}, args...)
	}
	p.say("starting %s on %s", s.binary, db.kind())
	cp, err := startControlPlane(ctx, startOptions{
		Binary: s.binary, DataDir: filepath.Join(dir, "cp"), Database: db,
		Args: args, Log: log,
	})
	if err != nil {
		return err
	}
	defer cp.Stop()
	sum := Summary{Scenario: scenario, Database: db.kind()}
	return runOn(ctx, c, s, cp, db, dir, "load", p, &sum)
}

// runOn enrolls the hosts on cp, runs the scenario and prints the summary.
func runOn(ctx context.Context, c *cli.Context, s settings, cp *controlPlane, db database, dir, tag string, p *progress, sum *Summary) error {
	setup := time.Now()
	hostsDir, cleanup, err := makeHostsDir(s.hostsDir, dir)
	if err != nil {
		return err
	}
	defer cleanup()
	p.say("hosts' state directories in %s", hostsDir)
	// The enroll scenario's CPU and reference are taken once the tokens are made,
	// just before the hosts enroll.
	var cpu0 time.Duration
	var verify float64
	between := func() {
		if sum.Scenario == "enroll" {
			verify = verifyReference(time.Second)
			cpu0, _ = cp.ProcessCPU()
		}
	}
	hosts, st, err := enrollHosts(ctx, cp, hostsDir, s.hosts, s.enrollConcurrency, tag, p, between)
	if err != nil {
		return err
	}
	cpu1, _ := cp.ProcessCPU()
	sum.Hosts = len(hosts)
	p.say("enrolled %d hosts in %.1fs (tokens %.1fs, then enrollments %.1fs = %.0f/s; %d waits on a rate limit)",
		len(hosts), time.Since(setup).Seconds(), st.TokenSeconds, st.EnrollSeconds, float64(len(hosts))/st.EnrollSeconds, st.Throttled)

	switch sum.Scenario {
	case "rotate":
		err = rotateScenario(ctx, s, cp, db, dir, hosts, p, sum, setup)
	case "fleet":
		err = fleetScenario(ctx, s, cp, hosts, p, sum, setup)
	case "connect":
		err = connectScenario(ctx, s, cp, hosts, p, sum, setup)
	case "storm":
		err = stormScenario(ctx, s, cp, hosts, p, sum, setup)
	case "enroll":
		enrollScenario(sum, st, verify, (cpu1 - cpu0).Seconds())
		sum.SetupSeconds = st.TokenSeconds
	}
	if err != nil {
		return err
	}
	printSummary(c.App.Writer, s, *sum)
	if sum.Errors > 0 || sum.LostResults > 0 || sum.DuplicateResults > 0 {
		return fmt.Errorf("%d errors, %d lost and %d duplicated host results", sum.Errors, sum.LostResults, sum.DuplicateResults)
	}
	return nil
}

// removeHosts revokes and deletes every host tagged tag (the run's own, on a
// control plane the tool did not start).
func removeHosts(ctx context.Context, cp *controlPlane, tag string) error {
	admin := cp.Admin()
	var ids []string
	page := ""
	for {
		resp, err := admin.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{Target: "tags=AnyOf(" + tag + ")", PageToken: page}))
		if err != nil {
			return fmt.Errorf("list the run's hosts: %w", err)
		}
		for _, h := range resp.Msg.GetHosts() {
			ids = append(ids, h.GetNodeId())
		}
		if page = resp.Msg.GetNextPageToken(); page == "" {
			break
		}
	}
	return forEach(ctx, len(ids), 16, &progress{w: io.Discard}, "", nil, func(i int) error {
		if _, err := admin.RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: ids[i]})); err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
			return fmt.Errorf("revoke %s: %w", ids[i], err)
		}
		if _, err := admin.DeleteHost(ctx, connect.NewRequest(&edgev1.DeleteHostRequest{NodeId: ids[i]})); err != nil {
			return fmt.Errorf("delete %s: %w", ids[i], err)
		}
		return nil
	})
}

func rotateScenario(ctx context.Context, s settings, cp *controlPlane, db database, dir string, hosts []*host, p *progress, sum *Summary, setup time.Time) error {
	pool := make(chan *rotator, len(hosts))
	for _, h := range hosts {
		id, err := h.Dir.Load()
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		pool <- &rotator{nodeID: id.Node.NodeID, key: id.Key, token: id.Token}
	}
	sum.SetupSeconds = time.Since(setup).Seconds()
	ref, err := newTxReference(ctx, db, dir)
	if err != nil {
		return err
	}
	defer ref.Close()
	client := rotation.DialHTTP(cp.HTTP, cp.URL)
	for _, c := range s.levels {
		cpu0, _ := cp.ProcessCPU()
		lv, err := rotateLevel(ctx, client, pool, ref, c, s.rounds, s.duration)
		if err != nil {
			return fmt.Errorf("rotate at concurrency %d: %w", c, err)
		}
		cpu1, _ := cp.ProcessCPU()
		// The reference slices ran in this window too; the control plane idled then.
		lv.ServerCPUSeconds = (cpu1 - cpu0).Seconds()
		p.say("concurrency %d: %d rotations in %.1fs = %.0f/s (p50 %.1fms, p99 %.1fms, %d errors); reference 3-statement tx %.0f/s; ratio %.3f (rounds %d: %.3f to %.3f)",
			c, lv.Rotations, lv.Seconds, lv.PerSecond, lv.P50Ms, lv.P99Ms, lv.Errors, lv.ReferencePerSecond, lv.ReferenceRatio, lv.Rounds, lv.RatioMin, lv.RatioMax)
		sum.Levels = append(sum.Levels, lv)
		sum.Errors += lv.Errors
		sum.Seconds += lv.Seconds
		sum.ServerCPUSeconds += lv.ServerCPUSeconds
	}
	best := sum.Levels[0]
	for _, lv := range sum.Levels {
		if lv.PerSecond > best.PerSecond {
			best = lv
		}
	}
	sum.Concurrency, sum.PerSecond = best.Concurrency, best.PerSecond
	sum.Reference = fmt.Sprintf("3-statement %s transaction at concurrency %d", db.kind(), best.Concurrency)
	sum.ReferencePerSecond, sum.ReferenceRatio = best.ReferencePerSecond, best.ReferenceRatio
	return nil
}

func fleetScenario(ctx context.Context, s settings, cp *controlPlane, hosts []*host, p *progress, sum *Summary, setup time.Time) error {
	ds, err := startDaemons(hosts, daemonOptions{Shared: cp.HTTP, FastBackoff: true})
	if err != nil {
		return err
	}
	defer ds.stop()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := ds.waitConnected(wctx, p); err != nil {
		return err
	}
	sum.SetupSeconds = time.Since(setup).Seconds()
	p.say("all %d daemons Connected (setup %.1fs); measuring the Ed25519 reference", len(hosts), sum.SetupSeconds)
	refRate := ed25519Reference(2 * time.Second)
	sum.Batch = s.batch
	sum.Reference = "Ed25519 sign+verify on every core"
	sum.ReferencePerSecond = refRate
	for run := 1; run <= s.runs; run++ {
		before, err := keyFingerprints(hosts)
		if err != nil {
			return err
		}
		cpu0, _ := cp.ProcessCPU()
		out, err := runFleet(ctx, cp, "load", s.batch, s.deadline, p)
		if err != nil {
			return err
		}
		cpu1, _ := cp.ProcessCPU()
		sum.ServerCPUSeconds += (cpu1 - cpu0).Seconds()
		counts := out.final.GetRun().GetCounts()
		sum.Results = &FleetCounts{Total: int(counts.GetTotal()), Succeeded: int(counts.GetSucceeded()), Failed: int(counts.GetFailed()), Skipped: int(counts.GetSkipped())}
		sum.Waves = out.waves
		sum.Seconds += out.seconds
		for _, h := range hosts {
			switch n := out.results[h.NodeID]; {
			case n == 0:
				sum.LostResults++
			case n > 1:
				sum.DuplicateResults += n - 1
			}
		}
		var took []time.Duration
		for _, h := range out.final.GetHosts() {
			if h.GetStartedAt() != nil && h.GetFinishedAt() != nil {
				took = append(took, h.GetFinishedAt().AsTime().Sub(h.GetStartedAt().AsTime()))
			}
		}
		slices.Sort(took)
		sum.HostP50Ms, sum.HostP99Ms = pct(took, 0.5), pct(took, 0.99)
		bad, err := verifyRotated(ctx, cp, hosts, before)
		if err != nil {
			return err
		}
		sum.Errors += bad
		p.say("run %d: %d hosts in %d waves in %.1fs = %.0f hosts/s (each host p50 %.0fms, p99 %.0fms); %d succeeded, %d failed, %d skipped; %d not verified on a new key",
			run, counts.GetTotal(), out.waves, out.seconds, float64(counts.GetTotal())/out.seconds, sum.HostP50Ms, sum.HostP99Ms,
			counts.GetSucceeded(), counts.GetFailed(), counts.GetSkipped(), bad)
	}
	sum.PerSecond = float64(len(hosts)*s.runs) / sum.Seconds
	sum.ReferenceRatio = ratio(sum.PerSecond, refRate)
	return nil
}

// verifyRotated counts hosts that are not Connected on a key that is new (differs
// from before), the same on the control plane and in the host's node.key.
func verifyRotated(ctx context.Context, cp *controlPlane, hosts []*host, before map[string]string) (int, error) {
	after, err := keyFingerprints(hosts)
	if err != nil {
		return 0, err
	}
	resp, err := cp.Admin().ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{Target: "tags=AnyOf(load)"}))
	if err != nil {
		return 0, fmt.Errorf("list hosts: %w", err)
	}
	server := map[string]*edgev1.Host{}
	for _, h := range resp.Msg.GetHosts() {
		server[h.GetNodeId()] = h
	}
	bad := 0
	for _, h := range hosts {
		sh := server[h.NodeID]
		if sh == nil || after[h.NodeID] == before[h.NodeID] || sh.GetKeyFingerprint() != after[h.NodeID] || sh.GetStatus() != edgev1.HostStatus_HOST_STATUS_CONNECTED {
			bad++
		}
	}
	return bad, nil
}

func printSummary(w io.Writer, s settings, sum Summary) {
	if s.json {
		_ = writeJSON(w, sum)
		return
	}
	switch sum.Scenario {
	case "rotate":
		fmt.Fprintf(w, "rotate on %s, %d hosts\n", sum.Database, sum.Hosts)
		fmt.Fprintf(w, "%-12s %10s %10s %9s %9s %14s %8s %13s\n", "CONCURRENCY", "ROTATIONS", "PER_SEC", "P50_MS", "P99_MS", "REF_TX_PER_SEC", "RATIO", "ROUNDS")
		for _, lv := range sum.Levels {
			fmt.Fprintf(w, "%-12d %10d %10.0f %9.1f %9.1f %14.0f %8.3f %13s\n", lv.Concurrency, lv.Rotations, lv.PerSecond, lv.P50Ms, lv.P99Ms, lv.ReferencePerSecond, lv.ReferenceRatio,
				fmt.Sprintf("%d:%.3f-%.3f", lv.Rounds, lv.RatioMin, lv.RatioMax))
		}
	case "fleet":
		fmt.Fprintf(w, "fleet keys.rotate on %s: %d hosts, rolling=%d, %d waves: %.1fs, %.0f hosts/s\n", sum.Database, sum.Hosts, sum.Batch, sum.Waves, sum.Seconds, sum.PerSecond)
		fmt.Fprintf(w, "reference: %s %.0f/s; ratio %.4f\n", sum.Reference, sum.ReferencePerSecond, sum.ReferenceRatio)
		fmt.Fprintf(w, "results: %d succeeded, %d failed, %d skipped; %d lost, %d duplicated; %d not verified on a new key\n",
			sum.Results.Succeeded, sum.Results.Failed, sum.Results.Skipped, sum.LostResults, sum.DuplicateResults, sum.Errors)
	case "connect":
		fmt.Fprintf(w, "connect on %s: %d daemons Connected\n", sum.Database, sum.Hosts)
		fmt.Fprintf(w, "memory: %.1f KiB RSS per daemon (heap %.1f KiB, stacks %.1f KiB, %.2f goroutines); RSS %.1f MiB, %.1f MiB before the daemons\n",
			*sum.KiBPerDaemon, *sum.HeapKiBPerDaemon, *sum.StackKiBPerDaemon, *sum.GoroutinesPerDaemon, *sum.RSSMiB, *sum.RSSBaseMiB)
		fmt.Fprintf(w, "heartbeats: %.0f/s validated, %.1fµs of server CPU each = %.2f Ed25519 verifies of %.1fµs (%s)\n",
			*sum.HeartbeatsPerSecond, *sum.CPUMicrosPerHeartbeat, *sum.VerifiesPerHeartbeat, 1e6/sum.ReferencePerSecond, sum.Reference)
		fmt.Fprintf(w, "beside it, the wall-clock reference before the daemons: verify %.0f/s on one core, %.2f of those per heartbeat\n",
			*sum.VerifyWallPerSecond, *sum.WallVerifiesPerHeartbeat)
		if sum.RevocationP99Ms != nil {
			fmt.Fprintf(w, "revocation: %d hosts, stream closed p50 %.1fms, p99 %.1fms after the RevokeHost call\n", sum.Revoked, *sum.RevocationP50Ms, *sum.RevocationP99Ms)
		}
	case "storm":
		fmt.Fprintf(w, "storm on %s: %d daemons back %.1fs after the control plane was (its restart: %.1fs)\n", sum.Database, sum.Hosts, *sum.ReconnectSeconds, *sum.RestartSeconds)
		fmt.Fprintf(w, "per daemon: %.2f stream attempts (%.2f while nothing listened), %.2f streams welcomed, %.2f attestations, %.2f challenges\n",
			*sum.AttemptsPerDaemon, *sum.UnreachablePerDaemon, *sum.StreamsPerDaemon, *sum.AttestsPerDaemon, *sum.ChallengesPerDaemon)
		fmt.Fprintf(w, "memory: peak RSS %.1f MiB = %.2fx the steady %.1f MiB before the restart\n", *sum.PeakRSSMiB, *sum.PeakRSSRatio, *sum.RSSMiB)
		fmt.Fprintf(w, "reference: %s %.0f/s; %.0f daemons back per second; ratio %.4f\n", sum.Reference, sum.ReferencePerSecond, sum.PerSecond, sum.ReferenceRatio)
	case "enroll":
		fmt.Fprintf(w, "enroll on %s: %d hosts from one source in %.1fs = %.0f/s (%d waits on a rate limit); tokens made first in %.1fs\n",
			sum.Database, sum.Hosts, sum.Seconds, sum.PerSecond, int(*sum.Throttled), *sum.TokenSeconds)
		fmt.Fprintf(w, "reference: %s %.0f/s; ratio %.4f\n", sum.Reference, sum.ReferencePerSecond, sum.ReferenceRatio)
	}
	fmt.Fprintf(w, "setup %.1fs; control plane CPU %.1fs during the measured part\n", sum.SetupSeconds, sum.ServerCPUSeconds)
}

// makeHostsDir makes the directory holding every simulated host's state dir.
func makeHostsDir(flag, workDir string) (string, func(), error) {
	if flag != "" {
		d, err := os.MkdirTemp(flag, "aegis-loadtest-hosts-*")
		if err != nil {
			return "", nil, fmt.Errorf("%w: --hosts-dir: %v", ErrBadInput, err)
		}
		return d, func() { os.RemoveAll(d) }, nil
	}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "aegis-loadtest-hosts-*"); err == nil {
			return d, func() { os.RemoveAll(d) }, nil
		}
	}
	d := filepath.Join(workDir, "hosts")
	return d, func() {}, os.Mkdir(d, 0o700)
}

func durationOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
