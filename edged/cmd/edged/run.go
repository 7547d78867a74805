package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/aegis-edge/aegis/api/buildinfo"
	"io"
	"log/slog"
	"time"

	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/internal/config"
	"github.com/aegis-edge/aegis/edged/internal/localapi"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/urfave/cli/v2"
)

// version is the release version; release builds stamp it through api/buildinfo.
var version = buildinfo.Get().Version

const runDescription = `Runs the daemon in the foreground (systemd runs it as a service).

It keeps this host's identity connected to the control plane: a live, authenticated
stream with a heartbeat, automatic token refresh before expiry, re-attestation when the
token is refused, and reconnection with backoff when the network or server goes away.

If the host is not enrolled yet, edged waits and picks up the enrollment as soon as
one is made:

   aegis edge enroll --token T [--server https://HOST:7443]

It refuses to start when node.key or node.token can be read by group or others, or
the state dir is open to them (fix with the chmod command it prints), and when another
edged already serves the same state dir.

While running, it serves 'aegis edge status', 'aegis edge keys rotate', 'aegis edge token
refresh' and 'aegis edge logout' on <state-dir>/edged.sock (mode 0600): it rotates its
own key without dropping its stream, finishes or undoes a rotation a crash interrupted
(on every start), and deletes archived keys once their --keep-old has passed. It also
rotates by itself before its key grows older than rotation.max_key_age or the control
plane's rotation policies allow, at a random moment in the window before the due time.

Config file (YAML; every key optional; flags win):

   heartbeat_interval: 10s         # until the server says otherwise
   token_refresh_margin_secs: 300  # refresh this long before the token expires
   reconnect_max_backoff: 30s
   log_level: info                 # debug, info, warn, error

   rotation:                       # routine rotation on cadence
     max_key_age: 90d              # rotate before the key is this old (the control
                                   # plane's policies may ask for less); 10s minimum
     keep_old: 24h                 # how long a routine rotation keeps the old key
   tools:
     max_output_bytes: 1048576     # output of one call beyond this is dropped (reported)
     default_deadline: 60s         # for a call that came without a deadline
   security_contexts:              # the local policy; absent: every tool call is denied
     ops:                          # a context; the control plane picks one per host
       cmd.run:
         - command: /usr/bin/uptime    # absolute path or glob; any args
         - command: /bin/echo
           args: ["*"]                 # per-position globs; "**" last: any remaining
         - command: /bin/sh            # a shell only when a rule names it
           args: ["-c", "*"]
       cwd: /tmp                   # default working directory
       env_allow: [LANG, TZ]       # environment keys a call may set

A tool call runs only when the context named by this host's current token allows it;
a bare command name is resolved with PATH=/usr/local/bin:/usr/bin:/bin first, and the
rule must match that absolute path. Calls run without a shell, in their own process
group, killed whole at their deadline or when cancelled; a key rotation or token
refresh never touches a running call.

Several daemons can run on one machine, each with its own --state-dir.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if err := newApp(stdout, stderr).RunContext(ctx, args); err != nil {
		fmt.Fprintf(stderr, "edged: %v\n", err)
		return 1
	}
	return 0
}

// newApp is edged's command line (also rendered as docs/man/edged.1).
func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "edged",
		Usage:     "the Aegis Edge daemon: this host's identity, connected to the control plane",
		Version:   buildinfo.Get().String(),
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed once, below, with the exit code decided there.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			{
				Name:        "run",
				Usage:       "run the daemon in the foreground",
				UsageText:   "edged run [--state-dir DIR] [--config FILE]",
				Description: runDescription,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "state-dir", Usage: "state directory (default: $" + keystore.EnvStateDir + ", else $STATE_DIRECTORY under systemd, else " + keystore.SystemStateDir + " if it exists, else ~/.aegis/edge)"},
					&cli.StringFlag{Name: "config", Usage: "YAML config file", EnvVars: []string{"AEGIS_EDGE_CONFIG"}},
					&cli.DurationFlag{Name: "heartbeat-interval", Usage: "heartbeat period until the server sets one (default 10s)"},
					&cli.IntFlag{Name: "token-refresh-margin-secs", Usage: "refresh the node token this many seconds before it expires (default 300)"},
					&cli.DurationFlag{Name: "reconnect-max-backoff", Usage: "cap on the delay between reconnect attempts (default 30s)"},
					&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error (default info)", EnvVars: []string{"AEGIS_EDGE_LOG_LEVEL"}},
				},
				Action: func(c *cli.Context) error { return runDaemon(c.Context, c, stderr) },
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(stdout, buildinfo.Get().Line("edged"))
					return nil
				},
			},
		},
	}
}

func runDaemon(ctx context.Context, c *cli.Context, stderr io.Writer) error {
	dirPath, err := keystore.ResolveDir(c.String("state-dir"))
	if err != nil {
		return err
	}
	var file config.File
	if p := c.String("config"); p != "" {
		if file, err = config.ReadFile(p); err != nil {
			return err
		}
	}
	var flags config.Flags
	if c.IsSet("heartbeat-interval") {
		v := c.Duration("heartbeat-interval")
		flags.HeartbeatInterval = &v
	}
	if c.IsSet("token-refresh-margin-secs") {
		v := c.Int("token-refresh-margin-secs")
		flags.TokenRefreshMarginSecs = &v
	}
	if c.IsSet("reconnect-max-backoff") {
		v := c.Duration("reconnect-max-backoff")
		flags.ReconnectMaxBackoff = &v
	}
	if c.IsSet("log-level") {
		v := c.String("log-level")
		flags.LogLevel = &v
	}
	cfg, err := config.Build(dirPath, file, flags)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))

	dir := keystore.Open(cfg.StateDir)
	if err := dir.CheckPermissions(); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	if err := dir.Create(); err != nil {
		return err
	}
	lock, err := dir.LockDaemon()
	if err != nil {
		return err
	}
	defer lock.Release()

	a := agent.New(agent.Config{
		Dir:                 dir,
		Logger:              logger,
		HeartbeatInterval:   cfg.HeartbeatInterval,
		RefreshMargin:       cfg.TokenRefreshMargin,
		MaxBackoff:          cfg.ReconnectMaxBackoff,
		Version:             version,
		Policy:              cfg.Policy,
		MaxOutputBytes:      cfg.MaxOutputBytes,
		DefaultToolDeadline: cfg.DefaultDeadline,
		MaxKeyAge:           cfg.MaxKeyAge,
		KeepOld:             cfg.KeepOld,
	})
	for _, w := range cfg.Warnings {
		logger.Warn(w)
	}
	if cfg.Policy == nil {
		logger.Warn("no security_contexts in the config: every tool call will be denied")
	} else {
		logger.Info("local security policy loaded", "security_contexts", cfg.Policy.Contexts())
	}
	srv, err := localapi.Listen(dir.File(keystore.SocketFile), a, logger)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	logger.Info("edged started", "version", version, "state_dir", dir.Path(), "socket", dir.File(keystore.SocketFile))

	runErr := a.Run(ctx)

	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	closeErr := srv.Close(shutdownCtx)
	if err := <-serveErr; err != nil {
		closeErr = errors.Join(closeErr, err)
	}
	if runErr != nil {
		return fmt.Errorf("refusing to run: %w", runErr)
	}
	logger.Info("edged stopped")
	return closeErr
}
