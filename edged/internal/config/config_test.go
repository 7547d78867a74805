package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/edged/internal/policy"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "edged.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Build("/s", File{}, File{})
	if err != nil {
		t.Fatal(err)
	}
	if c.HeartbeatInterval != 10*time.Second || c.TokenRefreshMargin != 300*time.Second ||
		c.ReconnectMaxBackoff != 30*time.Second || c.LogLevel != slog.LevelInfo {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestFileThenFlagsWin(t *testing.T) {
	f, err := ReadFile(writeConfig(t, "heartbeat_interval: 2s\ntoken_refresh_margin_secs: 60\nreconnect_max_backoff: 5s\nlog_level: debug\n"))
	if err != nil {
		t.Fatal(err)
	}
	hb := 500 * time.Millisecond
	lvl := "warn"
	c, err := Build("/s", f, File{HeartbeatInterval: &hb, LogLevel: &lvl})
	if err != nil {
		t.Fatal(err)
	}
	if c.HeartbeatInterval != hb || c.TokenRefreshMargin != time.Minute || c.ReconnectMaxBackoff != 5*time.Second || c.LogLevel != slog.LevelWarn {
		t.Fatalf("merged: %+v", c)
	}
}

func TestUnknownKeyRefused(t *testing.T) {
	_, err := ReadFile(writeConfig(t, "heartbeat_intervl: 2s\n"))
	if err == nil || !strings.Contains(err.Error(), "heartbeat_intervl") {
		t.Fatalf("typo accepted: %v", err)
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	f, err := ReadFile(writeConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build("/s", f, File{}); err != nil {
		t.Fatal(err)
	}
}

func TestValidation(t *testing.T) {
	zero := 0
	bad := "loud"
	tiny := time.Millisecond
	_, err := Build("/s", File{TokenRefreshMarginSecs: &zero, LogLevel: &bad, HeartbeatInterval: &tiny}, File{})
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"token_refresh_margin_secs", "log_level", "heartbeat_interval"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

const contractExample = `
tools:
  max_output_bytes: 1048576
  default_deadline: 60s
security_contexts:
  ops:
    cmd.run:
      - command: /usr/bin/uptime
      - command: /bin/echo
        args: ["*"]
      - command: /bin/sh
        args: ["-c", "*"]
    cwd: /tmp
    env_allow: [LANG, TZ]
  readonly:
    cmd.run:
      - command: /usr/bin/uptime
`

func TestToolsAndSecurityContexts(t *testing.T) {
	f, err := ReadFile(writeConfig(t, contractExample))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Build("/s", f, File{})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxOutputBytes != 1<<20 || c.DefaultDeadline != time.Minute {
		t.Fatalf("tools: %+v", c)
	}
	if got := c.Policy.Contexts(); len(got) != 2 || got[0] != "ops" || got[1] != "readonly" {
		t.Fatalf("contexts %v", got)
	}
	ops := f.SecurityContexts["ops"]
	if ops.Cwd != "/tmp" || len(ops.EnvAllow) != 2 || len(ops.Rules["cmd.run"]) != 3 {
		t.Fatalf("ops: %+v", ops)
	}
	if r := ops.Rules["cmd.run"][0]; !r.AnyArgs || r.Command != "/usr/bin/uptime" {
		t.Fatalf("a rule without args allows any: %+v", r)
	}
	if r := ops.Rules["cmd.run"][2]; r.AnyArgs || len(r.Args) != 2 {
		t.Fatalf("sh rule: %+v", r)
	}
}

func TestNoPolicyIsNil(t *testing.T) {
	c, err := Build("/s", File{}, File{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != nil || c.MaxOutputBytes != DefaultMaxOutputBytes || c.DefaultDeadline != DefaultToolDeadline {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestPolicyErrorsNameKeyAndLine(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"unknown tools key", "tools:\n  max_output: 5\n", "line 2: tools.max_output: unknown setting"},
		{"bad bytes", "tools:\n  max_output_bytes: lots\n", "line 2: tools.max_output_bytes"},
		{"bad deadline", "tools:\n  default_deadline: soon\n", "line 2: tools.default_deadline"},
		{"unknown context key", "security_contexts:\n  ops:\n    cmd.runn: []\n", "line 3: security_contexts.ops.cmd.runn: unknown key (known: cmd.run, cwd, env_allow)"},
		{"unknown rule key", "security_contexts:\n  ops:\n    cmd.run:\n      - command: /bin/x\n        argz: [a]\n", "line 5: security_contexts.ops.cmd.run[0].argz: unknown key"},
		{"rule without command", "security_contexts:\n  ops:\n    cmd.run:\n      - args: [a]\n", "line 4: security_contexts.ops.cmd.run[0]: a rule needs a command"},
		{"relative command", "security_contexts:\n  ops:\n    cmd.run:\n      - command: echo\n", "line 4: security_contexts.ops.cmd.run[0].command"},
		{"args not a list", "security_contexts:\n  ops:\n    cmd.run:\n      - command: /bin/x\n        args: a\n", "line 5: security_contexts.ops.cmd.run[0].args: want a list"},
		{"duplicate tool", "security_contexts:\n  ops:\n    cmd.run: []\n    cmd.run: []\n", "line 4: security_contexts.ops.cmd.run: given twice"},
		{"contexts not a mapping", "security_contexts: [ops]\n", "line 1: security_contexts: want a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadFile(writeConfig(t, tt.body))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestPolicyValidatedOnBuild(t *testing.T) {
	f, err := ReadFile(writeConfig(t, "tools:\n  max_output_bytes: 0\nsecurity_contexts:\n  \"bad name!\": {}\n  ops:\n    cmd.run:\n      - command: /bin/[x\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build("/s", f, File{})
	for _, want := range []string{"max_output_bytes", `"bad name!"`, "security context ops", "malformed"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

// FuzzParse: no input makes the loader panic, and a file it accepts either builds
// into a policy that can evaluate a call, or is refused with an error.
func FuzzParse(f *testing.F) {
	f.Add([]byte(contractExample))
	f.Fuzz(func(t *testing.T, raw []byte) {
		file, err := parse("fuzz.yaml", raw)
		if err != nil {
			return
		}
		c, err := Build("/s", file, File{})
		if err != nil {
			return
		}
		for _, name := range c.Policy.Contexts() {
			_, _ = c.Policy.Evaluate(policy.Call{TokenContext: name, RequestedContext: name, Tool: policy.ToolCmdRun, Command: "/bin/echo", Args: []string{"x"}})
		}
	})
}

func TestRotationSettings(t *testing.T) {
	f, err := parse("edged.yaml", []byte("rotation:\n  max_key_age: 90d\n  keep_old: 1d12h\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Build("/var/lib/aegis", f, File{})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxKeyAge != 90*24*time.Hour || c.KeepOld != 36*time.Hour || len(c.Warnings) != 0 {
		t.Errorf("max %v keep %v warnings %q", c.MaxKeyAge, c.KeepOld, c.Warnings)
	}

	f, err = parse("edged.yaml", []byte("rotation:\n  max_key_age: 30s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c, err = Build("/var/lib/aegis", f, File{}); err != nil || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "below 1h") {
		t.Errorf("30s: %v, warnings %q", err, c.Warnings)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"rotation:\n  max_key_age: ninety\n", `line 2: rotation.max_key_age: "ninety" is not a duration like 90d or 12h`},
		{"rotation:\n  max_age: 90d\n", "line 2: rotation.max_age: unknown setting (known: max_key_age, keep_old)"},
		{"rotation: 90d\n", "line 1: rotation: want a mapping"},
	} {
		_, err := parse("edged.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
	f, _ = parse("edged.yaml", []byte("rotation:\n  max_key_age: 5s\n"))
	if _, err := Build("/var/lib/aegis", f, File{}); err == nil || !strings.Contains(err.Error(), "rotation.max_key_age: max key age 5s is below the minimum 10s") {
		t.Errorf("5s: %v", err)
	}
}
