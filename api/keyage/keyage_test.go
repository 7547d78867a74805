package keyage

import (
	"errors"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"90d", 90 * Day},
		{"1d", Day},
		{"1.5d", 36 * time.Hour},
		{"1d12h", 36 * time.Hour},
		{"12h", 12 * time.Hour},
		{"15s", 15 * time.Second},
		{" 30m ", 30 * time.Minute},
		{"0d", 0},
	} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "d", "90", "ninety days", "-1d", "1e3d", "+1d", "1dd", "5x", "-5m", "99999d"} {
		if _, err := Parse(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %v, want ErrSyntax", bad, err)
		}
	}
}

func TestParseMaxBounds(t *testing.T) {
	if _, _, err := ParseMax("9s"); err == nil {
		t.Error("9s accepted")
	}
	if _, w, err := ParseMax("10s"); err != nil || w == "" {
		t.Errorf("10s: warning %q, err %v; want a warning", w, err)
	}
	if _, w, err := ParseMax("59m"); err != nil || w == "" {
		t.Errorf("59m: warning %q, err %v", w, err)
	}
	if d, w, err := ParseMax("90d"); err != nil || w != "" || d != 90*Day {
		t.Errorf("90d: %v %q %v", d, w, err)
	}
	if _, _, err := ParseMax("3651d"); err == nil {
		t.Error("3651d accepted")
	}
}

func TestFormatRoundTrip(t *testing.T) {
	for _, d := range []time.Duration{90 * Day, 36 * time.Hour, 15 * time.Second, 90 * time.Minute, Day + time.Second} {
		back, err := Parse(Format(d))
		if err != nil || back != d {
			t.Errorf("Format(%v) = %q parses as %v, %v", d, Format(d), back, err)
		}
	}
	if Format(90*Day) != "90d" {
		t.Errorf("Format(90d) = %q", Format(90*Day))
	}
}

func TestEffectiveIsTheSmallestSetValue(t *testing.T) {
	if got := Effective(0, 90*Day, 30*Day); got != 30*Day {
		t.Errorf("got %v", got)
	}
	if got := Effective(7*Day, 90*Day); got != 7*Day {
		t.Errorf("a local setting smaller than the policy must win, got %v", got)
	}
	if got := Effective(0, 0); got != 0 {
		t.Errorf("nothing set: got %v", got)
	}
}

func TestWindow(t *testing.T) {
	if Window(90*Day) != Day || Window(15*time.Second) != time.Second+500*time.Millisecond || Window(5*time.Second) != time.Second {
		t.Errorf("windows: %v %v %v", Window(90*Day), Window(15*time.Second), Window(5*time.Second))
	}
}
