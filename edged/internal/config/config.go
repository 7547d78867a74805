// Package config owns edged's settings: the YAML file (--config), its defaults, and
// the one merge with command-line flags (flags win), validated once so the rest of the
// daemon never re-checks a value.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/edged/internal/policy"
	"go.yaml.in/yaml/v3"
)

// File is the YAML file as written by people. Pointers tell "absent" from "zero".
type File struct {
	HeartbeatInterval      *time.Duration `yaml:"heartbeat_interval"`
	TokenRefreshMarginSecs *int           `yaml:"token_refresh_margin_secs"`
	ReconnectMaxBackoff    *time.Duration `yaml:"reconnect_max_backoff"`
	LogLevel               *string        `yaml:"log_level"`
	// Tools is the tools: section.
	Tools Tools `yaml:"tools"`
	// Rotation is the rotation: section (routine rotation on cadence).
	Rotation Rotation `yaml:"rotation"`
	// SecurityContexts is the local security policy; nil when the file has none
	// (then every tool call is denied).
	SecurityContexts map[string]policy.Context `yaml:"security_contexts"`
}

// Tools are the settings of tool calls.
type Tools struct {
	MaxOutputBytes  *int64         `yaml:"max_output_bytes"`
	DefaultDeadline *time.Duration `yaml:"default_deadline"`
}

// Rotation are the host owner's settings for routine rotation.
type Rotation struct {
	// MaxKeyAge: rotate before the key is this old (`90d`, `12h`); the control
	// plane's policies may ask for less, never more.
	MaxKeyAge *time.Duration `yaml:"max_key_age"`
	// KeepOld: how long a routine rotation keeps the archived old key.
	KeepOld *time.Duration `yaml:"keep_old"`
}

// Flags are the values given on the command line; nil means "not given".
type Flags = File

// Config is the validated runtime configuration.
type Config struct {
	StateDir string
	// HeartbeatInterval is used until the server's Welcome says otherwise.
	HeartbeatInterval   time.Duration
	TokenRefreshMargin  time.Duration
	ReconnectMaxBackoff time.Duration
	LogLevel            slog.Level
	// MaxOutputBytes caps the output one tool call sends; the rest is dropped and the
	// result says it was truncated.
	MaxOutputBytes int64
	// DefaultDeadline applies to a call that came without a deadline.
	DefaultDeadline time.Duration
	// Policy is the local security policy; nil denies every tool call.
	Policy *policy.Policy
	// MaxKeyAge is rotation.max_key_age (0: none locally).
	MaxKeyAge time.Duration
	// KeepOld is rotation.keep_old (0: the rotation default).
	KeepOld time.Duration
	// Warnings are accepted settings the operator should hear about (logged at start).
	Warnings []string
}

// Defaults as documented in DESIGN.md.
const (
	DefaultHeartbeatInterval      = 10 * time.Second
	DefaultTokenRefreshMarginSecs = 300
	DefaultReconnectMaxBackoff    = 30 * time.Second
	DefaultMaxOutputBytes         = 1 << 20
	DefaultToolDeadline           = 60 * time.Second
)

// ReadFile parses path. Unknown keys are errors, so a typo is not silently ignored;
// every error names the key and line.
func ReadFile(path string) (File, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("read config: %w", err)
	}
	return parse(path, raw)
}

func parse(path string, raw []byte) (File, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return File{}, fmt.Errorf("config %s: %s", path, oneLine(err))
	}
	var f File
	if len(doc.Content) == 0 {
		return f, nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return File{}, fmt.Errorf("config %s: want a mapping of settings at line %d", path, m.Line)
	}
	var errs []error
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		var err error
		switch k.Value {
		case "heartbeat_interval":
			f.HeartbeatInterval, err = decodeDuration(v)
		case "reconnect_max_backoff":
			f.ReconnectMaxBackoff, err = decodeDuration(v)
		case "token_refresh_margin_secs":
			var n int
			if err = v.Decode(&n); err == nil {
				f.TokenRefreshMarginSecs = &n
			} else {
				err = fmt.Errorf("%q is not a whole number of seconds", v.Value)
			}
		case "log_level":
			var l string
			if err = v.Decode(&l); err == nil {
				f.LogLevel = &l
			}
		case "tools":
			err = decodeTools(v, &f.Tools)
		case "security_contexts":
			f.SecurityContexts, err = decodeContexts(v)
		case "rotation":
			err = decodeRotation(v, &f.Rotation)
		default:
			err = errors.New("unknown setting (known: heartbeat_interval, token_refresh_margin_secs, reconnect_max_backoff, log_level, tools, rotation, security_contexts)")
		}
		if err != nil {
			var le *lineError
			if errors.As(err, &le) {
				// Already names the nested key and its line.
				errs = append(errs, err)
			} else {
				errs = append(errs, fmt.Errorf("line %d: %s: %s", k.Line, k.Value, oneLine(err)))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return File{}, fmt.Errorf("config %s: %s", path, oneLine(err))
	}
	return f, nil
}

func decodeDuration(v *yaml.Node) (*time.Duration, error) {
	d, err := time.ParseDuration(v.Value)
	if err != nil || v.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("%q is not a duration like 10s or 1m30s", v.Value)
	}
	return &d, nil
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// Build merges defaults < file < flags and validates the result.
func Build(stateDir string, file, flags File) (Config, error) {
	c := Config{
		StateDir:            stateDir,
		HeartbeatInterval:   DefaultHeartbeatInterval,
		TokenRefreshMargin:  DefaultTokenRefreshMarginSecs * time.Second,
		ReconnectMaxBackoff: DefaultReconnectMaxBackoff,
		LogLevel:            slog.LevelInfo,
		MaxOutputBytes:      DefaultMaxOutputBytes,
		DefaultDeadline:     DefaultToolDeadline,
	}
	level := ""
	var contexts map[string]policy.Context
	for _, src := range []File{file, flags} {
		if src.HeartbeatInterval != nil {
			c.HeartbeatInterval = *src.HeartbeatInterval
		}
		if src.TokenRefreshMarginSecs != nil {
			c.TokenRefreshMargin = time.Duration(*src.TokenRefreshMarginSecs) * time.Second
		}
		if src.ReconnectMaxBackoff != nil {
			c.ReconnectMaxBackoff = *src.ReconnectMaxBackoff
		}
		if src.LogLevel != nil {
			level = *src.LogLevel
		}
		if src.Tools.MaxOutputBytes != nil {
			c.MaxOutputBytes = *src.Tools.MaxOutputBytes
		}
		if src.Tools.DefaultDeadline != nil {
			c.DefaultDeadline = *src.Tools.DefaultDeadline
		}
		if src.SecurityContexts != nil {
			contexts = src.SecurityContexts
		}
		if src.Rotation.MaxKeyAge != nil {
			c.MaxKeyAge = *src.Rotation.MaxKeyAge
		}
		if src.Rotation.KeepOld != nil {
			c.KeepOld = *src.Rotation.KeepOld
		}
	}
	var errs []error
	if c.HeartbeatInterval < 10*time.Millisecond || c.HeartbeatInterval > time.Hour {
		errs = append(errs, fmt.Errorf("heartbeat_interval %s: want between 10ms and 1h", c.HeartbeatInterval))
	}
	if c.TokenRefreshMargin <= 0 {
		errs = append(errs, fmt.Errorf("token_refresh_margin_secs %d: want a positive number of seconds", int(c.TokenRefreshMargin/time.Second)))
	}
	if c.ReconnectMaxBackoff < 100*time.Millisecond || c.ReconnectMaxBackoff > time.Hour {
		errs = append(errs, fmt.Errorf("reconnect_max_backoff %s: want between 100ms and 1h", c.ReconnectMaxBackoff))
	}
	if level != "" {
		if err := c.LogLevel.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
			errs = append(errs, fmt.Errorf("log_level %q: want debug, info, warn or error", level))
		}
	}
	if c.MaxOutputBytes < 1 || c.MaxOutputBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("tools.max_output_bytes %d: want between 1 and 1073741824", c.MaxOutputBytes))
	}
	if c.DefaultDeadline < time.Second || c.DefaultDeadline > 24*time.Hour {
		errs = append(errs, fmt.Errorf("tools.default_deadline %s: want between 1s and 24h", c.DefaultDeadline))
	}
	if c.MaxKeyAge != 0 {
		w, err := keyage.Check(c.MaxKeyAge)
		if err != nil {
			errs = append(errs, fmt.Errorf("rotation.max_key_age: %v (write e.g. 90d)", err))
		}
		if w != "" {
			c.Warnings = append(c.Warnings, "rotation.max_key_age: "+w)
		}
	}
	if c.KeepOld < 0 || c.KeepOld > keyage.Max {
		errs = append(errs, fmt.Errorf("rotation.keep_old %s: want between 0 and %s", keyage.Format(c.KeepOld), keyage.Format(keyage.Max)))
	}
	if contexts != nil {
		p, err := policy.New(contexts)
		if err != nil {
			errs = append(errs, err)
		}
		c.Policy = p
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state dir is empty"))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("invalid configuration: %s", oneLine(err))
	}
	return c, nil
}
