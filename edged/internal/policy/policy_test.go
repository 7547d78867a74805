package policy_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/aegis-edge/aegis/edged/internal/policy"
)

func testPolicy(t testing.TB) *policy.Policy {
	t.Helper()
	p, err := policy.New(map[string]policy.Context{
		"ops": {
			Rules: map[string][]policy.Rule{policy.ToolCmdRun: {
				{Command: "/usr/bin/uptime", AnyArgs: true},
				{Command: "/bin/echo", Args: []string{"*"}},
				{Command: "/bin/sh", Args: []string{"-c", "*"}},
				{Command: "/usr/bin/sle?p", Args: []string{"[0-9]*"}},
				{Command: "/usr/bin/env", Args: []string{}},
				{Command: "/usr/bin/printf", Args: []string{"%s", "**"}},
				{Command: "/opt/tools/*", AnyArgs: true},
			}},
			Cwd:      "/tmp",
			EnvAllow: []string{"LANG", "TZ"},
		},
		"readonly": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {{Command: "/usr/bin/uptime", AnyArgs: true}}}},
		"empty":    {},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func call(ctx, command string, args ...string) policy.Call {
	return policy.Call{TokenContext: ctx, RequestedContext: ctx, Tool: policy.ToolCmdRun, Command: command, Args: args}
}

func TestEvaluate(t *testing.T) {
	p := testPolicy(t)
	allowed := func(c policy.Call) policy.Call { return c }
	tests := []struct {
		name string
		call policy.Call
		kind policy.Kind // 0: allowed
		path string
	}{
		{"exact path", call("ops", "/usr/bin/uptime"), 0, "/usr/bin/uptime"},
		{"any args", call("ops", "/usr/bin/uptime", "-p", "--x"), 0, "/usr/bin/uptime"},
		{"bare name resolved", call("ops", "uptime"), 0, "/usr/bin/uptime"},
		{"path cleaned", call("ops", "/usr/bin/../bin/uptime"), 0, "/usr/bin/uptime"},
		{"one arg glob", call("ops", "/bin/echo", "hello world/with slash"), 0, "/bin/echo"},
		{"same file through a symlinked dir", call("ops", "echo", "hi"), 0, ""},
		{"arg count too many", call("ops", "/bin/echo", "a", "b"), policy.Denied, ""},
		{"arg count too few", call("ops", "/bin/echo"), policy.Denied, ""},
		{"shell only as the rule says", call("ops", "/bin/sh", "-c", "echo hi; rm -rf /"), 0, "/bin/sh"},
		{"shell other flag", call("ops", "/bin/sh", "-e", "x"), policy.Denied, ""},
		{"shell script file", call("ops", "/bin/sh", "/tmp/x.sh"), policy.Denied, ""},
		{"glob command", call("ops", "/usr/bin/sleep", "5"), 0, "/usr/bin/sleep"},
		{"glob arg refuses", call("ops", "/usr/bin/sleep", "infinity"), policy.Denied, ""},
		{"empty args list means none", call("ops", "/usr/bin/env"), 0, "/usr/bin/env"},
		{"empty args list refuses one", call("ops", "/usr/bin/env", "X=1"), policy.Denied, ""},
		{"double star tail", call("ops", "/usr/bin/printf", "%s", "a", "b", "c"), 0, "/usr/bin/printf"},
		{"double star tail matches none", call("ops", "/usr/bin/printf", "%s"), 0, "/usr/bin/printf"},
		{"double star head must match", call("ops", "/usr/bin/printf", "%d", "1"), policy.Denied, ""},
		{"glob does not cross slash", call("ops", "/opt/tools/sub/x"), policy.Denied, ""},
		{"glob in dir", call("ops", "/opt/tools/x"), 0, "/opt/tools/x"},
		{"dot dot out of glob dir", call("ops", "/opt/tools/../../bin/sh"), policy.Denied, ""},
		{"no rule", call("ops", "/usr/bin/id"), policy.Denied, ""},
		{"relative path", call("ops", "./uptime"), policy.Denied, ""},
		{"bare name not in PATH", call("ops", "no-such-command-xyz"), policy.Denied, ""},
		{"empty command", call("ops", ""), policy.Denied, ""},
		{"NUL in arg", call("ops", "/bin/echo", "a\x00b"), policy.Denied, ""},
		{"other context is narrower", call("readonly", "/bin/echo", "x"), policy.Denied, ""},
		{"readonly allows uptime", call("readonly", "uptime"), 0, "/usr/bin/uptime"},
		{"context without the tool", call("empty", "uptime"), policy.Denied, ""},
		{"unknown context", call("nope", "uptime"), policy.Denied, ""},
		{"no context in token", call("", "uptime"), policy.Denied, ""},
		{"requested differs from token", policy.Call{TokenContext: "readonly", RequestedContext: "ops", Tool: policy.ToolCmdRun, Command: "uptime"}, policy.Denied, ""},
		{"token differs from requested", policy.Call{TokenContext: "ops", RequestedContext: "", Tool: policy.ToolCmdRun, Command: "uptime"}, policy.Denied, ""},
		{"unknown tool", policy.Call{TokenContext: "ops", RequestedContext: "ops", Tool: "file.read", Command: "/etc/passwd"}, policy.ToolNotFound, ""},
		{"allowed env", allowed(policy.Call{TokenContext: "ops", RequestedContext: "ops", Tool: policy.ToolCmdRun, Command: "uptime", Env: map[string]string{"TZ": "UTC"}}), 0, "/usr/bin/uptime"},
		{"env not allowed", policy.Call{TokenContext: "ops", RequestedContext: "ops", Tool: policy.ToolCmdRun, Command: "uptime", Env: map[string]string{"LD_PRELOAD": "/tmp/x.so"}}, policy.Denied, ""},
		{"PATH not allowed", policy.Call{TokenContext: "ops", RequestedContext: "ops", Tool: policy.ToolCmdRun, Command: "uptime", Env: map[string]string{"PATH": "/tmp"}}, policy.Denied, ""},
		{"relative cwd", policy.Call{TokenContext: "ops", RequestedContext: "ops", Tool: policy.ToolCmdRun, Command: "uptime", Cwd: "tmp"}, policy.Denied, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := p.Evaluate(tt.call)
			if tt.kind == 0 {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				if tt.path != "" && d.Path != tt.path {
					t.Fatalf("path %q, want %q", d.Path, tt.path)
				}
				return
			}
			var pe *policy.Error
			if !errors.As(err, &pe) || pe.Kind != tt.kind {
				t.Fatalf("got %+v, %v; want kind %d", d, err, tt.kind)
			}
			if d.Path != "" {
				t.Fatalf("a refused call has a decision: %+v", d)
			}
		})
	}
}

func TestNoPolicyDeniesEverything(t *testing.T) {
	for _, p := range []*policy.Policy{nil, {}, must(policy.New(nil))} {
		_, err := p.Evaluate(call("ops", "/usr/bin/uptime"))
		var pe *policy.Error
		if !errors.As(err, &pe) || pe.Kind != policy.Denied || !strings.Contains(err.Error(), "no local security policy") {
			t.Fatalf("no policy: %v", err)
		}
	}
}

func must(p *policy.Policy, err error) *policy.Policy {
	if err != nil {
		panic(err)
	}
	return p
}

func TestDecisionEnvAndCwd(t *testing.T) {
	p := testPolicy(t)
	c := call("ops", "uptime")
	c.Env = map[string]string{"TZ": "UTC", "LANG": "de_DE.UTF-8"}
	d, err := p.Evaluate(c)
	if err != nil {
		t.Fatal(err)
	}
	if d.Dir != "/tmp" {
		t.Fatalf("default cwd %q", d.Dir)
	}
	for _, want := range []string{"PATH=" + policy.SearchPath, "TZ=UTC", "LANG=de_DE.UTF-8"} {
		if !slices.Contains(d.Env, want) {
			t.Fatalf("env %v lacks %s", d.Env, want)
		}
	}
	if len(d.Env) != 4 { // PATH, HOME, LANG, TZ
		t.Fatalf("env %v", d.Env)
	}
	c = call("readonly", "uptime")
	c.Cwd = "/var/tmp/../tmp"
	if d, err = p.Evaluate(c); err != nil || d.Dir != "/var/tmp" {
		t.Fatalf("given cwd: %+v %v", d, err)
	}
	if d, err = p.Evaluate(call("readonly", "uptime")); err != nil || d.Dir != "/" {
		t.Fatalf("no cwd anywhere: %+v %v", d, err)
	}
}

func TestNewRejectsBadPolicies(t *testing.T) {
	tests := []struct {
		name string
		ctx  map[string]policy.Context
		want string
	}{
		{"bad name", map[string]policy.Context{"-x": {}}, `"-x"`},
		{"relative command", map[string]policy.Context{"a": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {{Command: "echo"}}}}}, "absolute"},
		{"bad glob", map[string]policy.Context{"a": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {{Command: "/bin/[x"}}}}}, "malformed"},
		{"bad arg glob", map[string]policy.Context{"a": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {{Command: "/bin/x", Args: []string{"[a"}}}}}}, "malformed"},
		{"double star not last", map[string]policy.Context{"a": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {{Command: "/bin/x", Args: []string{"**", "a"}}}}}}, "last"},
		{"unknown tool", map[string]policy.Context{"a": {Rules: map[string][]policy.Rule{"file.read": {{Command: "/bin/x"}}}}}, "unknown tool"},
		{"relative cwd", map[string]policy.Context{"a": {Cwd: "tmp"}}, "cwd"},
		{"bad env key", map[string]policy.Context{"a": {EnvAllow: []string{"A=B"}}}, "env_allow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policy.New(tt.ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %s", err, tt.want)
			}
		})
	}
}

// FuzzEvaluate: for any rule and any call, evaluation never panics, and an allowed
// call is one the rule really matches: same resolved command, never a relative
// path, and argument count consistent with the rule.
func FuzzEvaluate(f *testing.F) {
	f.Add("/bin/echo", "*", "**", "echo", "hello", "world")
	f.Add("/usr/bin/*", "-c", "", "/usr/bin/sh", "-c", "x/y")
	f.Add("/bin/sh", "-c", "*", "/bin/sh", "-c", "rm -rf /")
	f.Add("/opt/[a-z]?", "[", "\\", "/opt/ab", "[", "\\")
	f.Fuzz(func(t *testing.T, command, arg0, arg1, callCmd, callArg0, callArg1 string) {
		var args []string
		for _, a := range []string{arg0, arg1} {
			if a != "" {
				args = append(args, a)
			}
		}
		p, err := policy.New(map[string]policy.Context{"c": {Rules: map[string][]policy.Rule{policy.ToolCmdRun: {{Command: command, Args: args}}}}})
		if err != nil {
			return
		}
		callArgs := []string{callArg0, callArg1}
		d, err := p.Evaluate(call("c", callCmd, callArgs...))
		if err != nil {
			var pe *policy.Error
			if !errors.As(err, &pe) {
				t.Fatalf("not a policy error: %v", err)
			}
			return
		}
		if !strings.HasPrefix(d.Path, "/") {
			t.Fatalf("allowed a relative command %q", d.Path)
		}
		if len(args) == 0 || (args[len(args)-1] != "**" && len(args) != len(callArgs)) {
			t.Fatalf("rule args %q allowed call args %q", args, callArgs)
		}
		if !slices.Equal(d.Args, callArgs) {
			t.Fatalf("decision args %q, call args %q", d.Args, callArgs)
		}
	})
}
