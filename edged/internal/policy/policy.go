// Package policy owns the host's local security policy: named security contexts, each
// saying which tools and which commands (exact path or glob, with per-position
// argument globs) it allows, the working directory calls start in and which
// environment keys a call may set. Evaluation fails closed: anything not allowed by a
// rule of the context the host's current token names is denied, and nothing is run.
// The server chooses which context a host uses, never what a context allows.
package policy

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// ToolCmdRun is the only tool edged knows.
const ToolCmdRun = "cmd.run"

// Tools lists the tools edged implements, for error messages and config checks.
var Tools = []string{ToolCmdRun}

// SearchPath is the PATH a bare command name is resolved with, and the PATH a call's
// process sees unless the context lets the caller set its own.
const SearchPath = "/usr/local/bin:/usr/bin:/bin"

// DefaultCwd is the working directory when neither the call nor the context names one.
const DefaultCwd = "/"

// contextName is the shape of a security context name, the same the control plane
// accepts in SetHostSecurityContext.
var contextName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// envKey is a portable environment variable name.
var envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Rule allows one command. Command is an absolute path or a path.Match glob over
// absolute paths. Args, when AnyArgs is false, must match the call's arguments
// position by position (globs where '*' also matches '/'); "**" as the last element
// matches any remaining arguments, including none.
type Rule struct {
	Command string
	Args    []string
	AnyArgs bool
}

// Context is one named security context.
type Context struct {
	// Rules per tool name; a tool with no rules is not allowed.
	Rules map[string][]Rule
	// Cwd is the default working directory ("" means DefaultCwd).
	Cwd string
	// EnvAllow lists the environment keys a call may set.
	EnvAllow []string
}

// Policy is the validated set of contexts. The zero Policy (and a nil *Policy) allows
// nothing.
type Policy struct {
	contexts map[string]Context
}

// New validates contexts and returns the policy. Every problem is reported, each
// naming the context and rule it is in.
func New(contexts map[string]Context) (*Policy, error) {
	var errs []error
	names := make([]string, 0, len(contexts))
	for name := range contexts {
		names = append(names, name)
	}
	sort.Strings(names)
	p := &Policy{contexts: make(map[string]Context, len(contexts))}
	for _, name := range names {
		c := contexts[name]
		if !contextName.MatchString(name) {
			errs = append(errs, fmt.Errorf("security context %q: want a name of letters, digits, '.', '_' or '-' (at most 64)", name))
		}
		if err := c.validate(); err != nil {
			errs = append(errs, fmt.Errorf("security context %s: %w", name, err))
		}
		p.contexts[name] = c
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// Contexts are the names of the policy's contexts, sorted.
func (p *Policy) Contexts() []string {
	if p == nil {
		return nil
	}
	names := make([]string, 0, len(p.contexts))
	for n := range p.contexts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (c Context) validate() error {
	var errs []error
	for tool, rules := range c.Rules {
		if !slices.Contains(Tools, tool) {
			errs = append(errs, fmt.Errorf("unknown tool %q (known: %s)", tool, strings.Join(Tools, ", ")))
		}
		for i, r := range rules {
			if err := r.validate(); err != nil {
				errs = append(errs, fmt.Errorf("%s rule %d: %w", tool, i+1, err))
			}
		}
	}
	if c.Cwd != "" && !path.IsAbs(c.Cwd) {
		errs = append(errs, fmt.Errorf("cwd %q: want an absolute path", c.Cwd))
	}
	for _, k := range c.EnvAllow {
		if !envKey.MatchString(k) {
			errs = append(errs, fmt.Errorf("env_allow %q: not an environment variable name", k))
		}
	}
	return errors.Join(errs...)
}

func (r Rule) validate() error {
	if !path.IsAbs(r.Command) {
		return fmt.Errorf("command %q: want an absolute path or a glob starting with /", r.Command)
	}
	if _, err := path.Match(r.Command, ""); err != nil {
		return fmt.Errorf("command %q: malformed glob", r.Command)
	}
	for i, a := range r.Args {
		if a == "**" {
			if i != len(r.Args)-1 {
				return fmt.Errorf("args: \"**\" may only be the last element")
			}
			continue
		}
		if _, err := path.Match(argPattern(a), ""); err != nil {
			return fmt.Errorf("args[%d] %q: malformed glob", i, a)
		}
	}
	return nil
}

// Call is a tool call as the daemon received it.
type Call struct {
	// TokenContext is the security context named by the daemon's current token.
	TokenContext string
	// RequestedContext is the context the server believed the host is in.
	RequestedContext string
	Tool             string
	Command          string
	Args             []string
	Cwd              string
	Env              map[string]string
}

// Decision is an allowed call, ready to run.
type Decision struct {
	Context string
	// Path is the absolute path of the executable (the bare name resolved).
	Path string
	Args []string
	Dir  string
	// Env is the process's whole environment, KEY=VALUE.
	Env []string
}

// Kind says why a call was refused.
type Kind int

const (
	// Denied: the policy does not allow the call (every fail-closed case).
	Denied Kind = iota + 1
	// ToolNotFound: edged does not implement the tool.
	ToolNotFound
)

// Error is a refused call. Its message says what to change, never more than the
// call itself revealed.
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func deny(format string, args ...any) error {
	return &Error{Kind: Denied, Msg: fmt.Sprintf(format, args...)}
}

// Evaluate decides call against the context named by the host's current token. It
// returns a *Error for every refusal; nothing may be run then.
func (p *Policy) Evaluate(call Call) (Decision, error) {
	if p == nil || len(p.contexts) == 0 {
		return Decision{}, deny("denied: this host has no local security policy (security_contexts in the edged config); every call is refused")
	}
	if call.RequestedContext != call.TokenContext {
		return Decision{}, deny("denied: the call names security context %q but this host's token names %q; refresh the host's token (aegis edge token refresh) and try again",
			call.RequestedContext, call.TokenContext)
	}
	if call.TokenContext == "" {
		return Decision{}, deny("denied: this host has no security context assigned; set one with `aegisctl edge hosts set NODE_ID --security-context NAME`")
	}
	ctx, ok := p.contexts[call.TokenContext]
	if !ok {
		return Decision{}, deny("denied: security context %q is not defined in this host's local policy", call.TokenContext)
	}
	if !slices.Contains(Tools, call.Tool) {
		return Decision{}, &Error{Kind: ToolNotFound, Msg: fmt.Sprintf("tool %q is not implemented by edged (known: %s)", call.Tool, strings.Join(Tools, ", "))}
	}
	rules := ctx.Rules[call.Tool]
	if len(rules) == 0 {
		return Decision{}, deny("denied: security context %q does not allow tool %s", call.TokenContext, call.Tool)
	}
	exe, err := resolve(call.Command)
	if err != nil {
		return Decision{}, deny("denied: %v", err)
	}
	for _, a := range call.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return Decision{}, deny("denied: an argument contains a NUL byte")
		}
	}
	matched := false
	for _, r := range rules {
		if r.matches(exe, call.Args) {
			matched = true
			break
		}
	}
	if !matched {
		return Decision{}, deny("denied: no rule of security context %q allows %s with these arguments", call.TokenContext, exe)
	}
	dir := call.Cwd
	switch {
	case dir == "":
		dir = ctx.Cwd
		if dir == "" {
			dir = DefaultCwd
		}
	case !path.IsAbs(dir) || strings.IndexByte(dir, 0) >= 0:
		return Decision{}, deny("denied: cwd %q is not an absolute path", dir)
	default:
		dir = path.Clean(dir)
	}
	env, err := ctx.environment(call.Env)
	if err != nil {
		return Decision{}, err
	}
	return Decision{Context: call.TokenContext, Path: exe, Args: slices.Clone(call.Args), Dir: dir, Env: env}, nil
}

// environment is the whole environment of the process: fixed defaults, then the
// call's keys the context allows. A key it does not allow denies the call rather
// than being dropped, so the caller never runs something other than what was asked.
func (c Context) environment(extra map[string]string) ([]string, error) {
	home := os.Getenv("HOME")
	if home == "" || !path.IsAbs(home) {
		home = "/"
	}
	vars := map[string]string{"PATH": SearchPath, "HOME": home, "LANG": "C.UTF-8"}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !slices.Contains(c.EnvAllow, k) {
			return nil, deny("denied: environment variable %s is not in env_allow of this security context", k)
		}
		if strings.IndexByte(extra[k], 0) >= 0 {
			return nil, deny("denied: environment variable %s contains a NUL byte", k)
		}
		vars[k] = extra[k]
	}
	env := make([]string, 0, len(vars))
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env, nil
}

// resolve turns the requested command into the absolute path that is matched and
// run: an absolute path is cleaned; a bare name is looked up in SearchPath (never in
// edged's own PATH); anything else (a relative path) is refused.
func resolve(cmd string) (string, error) {
	switch {
	case cmd == "":
		return "", errors.New("no command given")
	case strings.IndexByte(cmd, 0) >= 0:
		return "", errors.New("the command contains a NUL byte")
	case path.IsAbs(cmd):
		return path.Clean(cmd), nil
	case strings.Contains(cmd, "/"):
		return "", fmt.Errorf("command %q: give an absolute path or a bare name", cmd)
	}
	for _, dir := range strings.Split(SearchPath, ":") {
		p := path.Join(dir, cmd)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q is not found in %s", cmd, SearchPath)
}

// matches reports whether the rule allows exe (absolute, cleaned) with args.
func (r Rule) matches(exe string, args []string) bool {
	if !r.matchesCommand(exe) {
		return false
	}
	if r.AnyArgs {
		return true
	}
	return matchArgs(r.Args, args)
}

// matchesCommand: a glob or path matches the resolved path. An exact rule also
// matches a path that is the same file through symlinked directories (a merged /usr
// makes /bin/echo and /usr/bin/echo one file), so the rule's spelling does not
// depend on which directory a bare name was found in.
func (r Rule) matchesCommand(exe string) bool {
	if ok, _ := path.Match(r.Command, exe); ok {
		return true
	}
	if hasMeta(r.Command) {
		return false
	}
	a, err1 := filepath.EvalSymlinks(r.Command)
	b, err2 := filepath.EvalSymlinks(exe)
	return err1 == nil && err2 == nil && a == b
}

func matchArgs(patterns, args []string) bool {
	for i, p := range patterns {
		if p == "**" && i == len(patterns)-1 {
			return true
		}
		if i >= len(args) {
			return false
		}
		if ok, _ := path.Match(argPattern(p), argValue(args[i])); !ok {
			return false
		}
	}
	return len(args) == len(patterns)
}

// An argument is not a path: '*' and '?' match '/' too. path.Match stops them at '/',
// so both sides swap '/' for NUL, which no argument may contain.
func argPattern(p string) string { return strings.ReplaceAll(p, "/", "\x00") }
func argValue(a string) string   { return strings.ReplaceAll(a, "/", "\x00") }

func hasMeta(p string) bool { return strings.ContainsAny(p, `*?[\`) }
