package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
