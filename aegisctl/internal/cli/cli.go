// Package cli owns the aegisctl command line: the command tree, its flags and help,
// the operator profile, and turning every failure into one line that says what to do
// next. Host-side work (enroll, status) is delegated to edged's exported packages so
// the CLI and the daemon never disagree about the state directory.
package cli

import (
	"context"
	"errors"
	"fmt"
	"github.com/aegis-edge/aegis/api/buildinfo"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	ucli "github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// Env is everything the CLI takes from its process, so tests can run it in-process.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads environment variables (os.Getenv when nil).
	Getenv func(string) string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// HomeDir returns the user's home directory (os.UserHomeDir when nil).
	HomeDir func() (string, error)
	// SystemStateDir is the packaged host's state directory, used when it exists and
	// no flag or $AEGIS_EDGE_STATE_DIR names another (keystore.SystemStateDir when
	// empty).
	SystemStateDir string
	// IsTerminal reports whether w is a terminal (colour is used only there); nil
	// checks for a character device.
	IsTerminal func(w io.Writer) bool
}

// Run runs the CLI with args (args[0] is the program name, used only in help and error
// text) and returns the process exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return RunEnv(ctx, args, Env{Stdin: os.Stdin, Stdout: stdout, Stderr: stderr})
}

// RunEnv is Run with an explicit environment.
func RunEnv(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.HomeDir == nil {
		env.HomeDir = os.UserHomeDir
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	name := "aegisctl"
	if len(args) > 0 {
		if base := filepath.Base(args[0]); base == "aegis" {
			name = base
		}
	}
	a := &app{name: name, env: env}
	root := a.newApp()
	if len(args) == 0 {
		args = []string{name}
	}
	err := root.RunContext(ctx, normalizeArgs(root, args))
	if err == nil {
		return exitOK
	}
	var xs exitStatus
	if errors.As(err, &xs) {
		// edge exec: the remote command's exit code, or its own status per outcome.
		if xs.msg != "" {
			fmt.Fprintf(env.Stderr, "%s: %s\n", name, oneLine(xs.msg))
		}
		return xs.code
	}
	fmt.Fprintf(env.Stderr, "%s: %s\n", name, oneLine(err.Error()))
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}

// app carries the process environment through the command actions.
type app struct {
	name string
	env  Env
}

// usageError marks a mistake in the command line itself (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{msg: fmt.Sprintf(format, args...)}
}

// oneLine keeps every error to a single line on stderr.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\r", "")
	return strings.ReplaceAll(s, "\n", "; ")
}

func (a *app) newApp() *ucli.App {
	root := &ucli.App{
		Name:        a.name,
		HelpName:    a.name,
		Usage:       "operate Aegis Edge: enroll hosts, check their status, manage the fleet",
		UsageText:   a.name + " [--help] COMMAND [COMMAND ...] [flags] [args]",
		Description: "Host side (talks to the local edged, or works on the state dir when it is stopped):\nedge enroll, edge status, edge keys rotate, edge token refresh, edge logout.\nOperator side (talks to the control plane with the profile saved by login):\nlogin, edge enrollment-tokens, edge hosts, edge exec, edge keys revoke-remote, edge fleet.\nOperators, tenants and the audit trail: api-tokens, tenants, audit.\n\n`" + a.name + " help COMMAND...` shows any command's help; `" + a.name + " completion bash|zsh|fish` completes them.\n\nExample:\n  " + a.name + " login --server https://127.0.0.1:7443 --token-file admin.token --ca-file ca.crt\n  " + a.name + " edge enroll --token \"$(" + a.name + " edge enrollment-tokens create)\"\n  " + a.name + " edge status",
		Reader:      a.env.Stdin,
		Writer:      a.env.Stdout,
		ErrWriter:   a.env.Stderr,
		// --version (and -v): version, commit and Go toolchain, as every binary has.
		Version:              buildinfo.Get().String(),
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		// Errors are printed once, by RunEnv, as one line.
		ExitErrHandler: func(*ucli.Context, error) {},
		Commands: []*ucli.Command{
			a.loginCommand(),
			a.apiTokensCommand(),
			a.tenantsCommand(),
			a.auditCommand(),
			a.completionCommand(),
			{
				Name:        "edge",
				Usage:       "work with edge hosts",
				UsageText:   a.name + " edge COMMAND [flags]",
				Description: "Example:\n  " + a.name + " edge status",
				Subcommands: []*ucli.Command{
					a.enrollCommand(),
					a.statusCommand(),
					a.keysCommand(),
					a.tokenCommand(),
					a.logoutCommand(),
					a.enrollmentTokensCommand(),
					a.hostsCommand(),
					a.execCommand(),
					a.fleetCommand(),
				},
			},
		},
	}
	root.Action = a.groupAction(func(c *ucli.Context) error { return ucli.ShowAppHelp(c) })
	root.OnUsageError = a.onUsageError
	for _, c := range root.Commands {
		a.finish(c, a.name)
	}
	return root
}

// finish gives every command of the tree the same usage-error handling, and makes a
// command group refuse unknown subcommands instead of silently printing help.
func (a *app) finish(c *ucli.Command, parent string) {
	path := parent + " " + c.Name
	c.HideHelpCommand = true
	if c.OnUsageError == nil {
		c.OnUsageError = a.onUsageError
	}
	if len(c.Subcommands) > 0 && c.Action == nil {
		c.Action = a.groupAction(func(ctx *ucli.Context) error { return ucli.ShowSubcommandHelp(ctx) })
	}
	for _, s := range c.Subcommands {
		a.finish(s, path)
	}
}

func (a *app) groupAction(help func(*ucli.Context) error) ucli.ActionFunc {
	return func(c *ucli.Context) error {
		if c.Args().Present() {
			path := a.name
			if c.Command != nil && c.Command.HelpName != "" {
				path = c.Command.HelpName
			}
			return usagef("unknown command %q: run `%s --help` to see the commands", c.Args().First(), path)
		}
		return help(c)
	}
}

func (a *app) onUsageError(c *ucli.Context, err error, _ bool) error {
	path := a.name
	if c.Command != nil && c.Command.HelpName != "" {
		path = c.Command.HelpName
	}
	return usagef("%v: run `%s --help`", err, path)
}

// outputFlag is -o text|json, shared by every listing and status command.
var outputFlag = &ucli.StringFlag{
	Name:    "output",
	Aliases: []string{"o"},
	Value:   "text",
	Usage:   "output format: text or json",
}

// outputFormat validates -o.
func outputFormat(c *ucli.Context) (string, error) {
	return outputFormatValue(c.String("output"))
}

func outputFormatValue(o string) (string, error) {
	switch o {
	case "text", "json":
		return o, nil
	default:
		return "", usagef("-o must be text or json (got %q)", o)
	}
}

// noArgs refuses stray positional arguments, which urfave/cli would otherwise ignore.
func noArgs(c *ucli.Context) error {
	if c.Args().Present() {
		return usagef("unexpected argument %q: run `%s --help`", c.Args().First(), c.Command.HelpName)
	}
	return nil
}

// oneArg returns the single positional argument named what.
func oneArg(c *ucli.Context, what string) (string, error) {
	switch c.Args().Len() {
	case 0:
		return "", usagef("missing %s: run `%s --help`", what, c.Command.HelpName)
	case 1:
		return c.Args().First(), nil
	default:
		extra := c.Args().Get(1)
		return "", usagef("unexpected argument %q: run `%s --help`", extra, c.Command.HelpName)
	}
}

// formatTime is the one way times are shown: RFC 3339 in UTC, second precision.
func formatTime(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format(time.RFC3339)
}

// timePtr is formatTime for JSON fields that are null when unset.
func timePtr(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := formatTime(t)
	return &s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// asTime is the zero time for an unset timestamp (AsTime would say 1970).
func asTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
