// Package keyage owns the one rule for routine key rotation that both ends share: how
// a maximum key age is written (Go durations plus whole days, `90d`), its bounds, and
// a host's effective maximum (the smallest of the policies that select it and of its
// own setting). The control plane, the daemon, the selector's key_age term and the CLI
// all parse and print ages here, so `90d` means the same everywhere.
package keyage

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

const (
	// Day is 24 hours: key ages are counted in days, without calendars.
	Day = 24 * time.Hour
	// Min is the smallest max key age accepted (for tests and demos).
	Min = 10 * time.Second
	// WarnBelow: a max age below this is accepted with a warning.
	WarnBelow = time.Hour
	// Max bounds a max key age (ten years), so due times never overflow.
	Max = 3650 * Day
)

// ErrSyntax: the text is not a duration.
var ErrSyntax = errors.New("not a duration")

// Parse reads a duration written as Go does (`90m`, `1h30m`, `10s`) or as whole or
// fractional days (`90d`, `1.5d`), or days followed by a Go duration (`1d12h`).
func Parse(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("%w: empty (write e.g. 90d, 12h or 30m)", ErrSyntax)
	}
	var days time.Duration
	if i := strings.IndexByte(t, 'd'); i >= 0 {
		n, err := strconv.ParseFloat(t[:i], 64)
		if err != nil || n < 0 || n > float64(Max/Day) || strings.ContainsAny(t[:i], "eE+-") {
			return 0, fmt.Errorf("%w: %q (write e.g. 90d, 12h or 30m)", ErrSyntax, s)
		}
		days = time.Duration(n * float64(Day))
		t = t[i+1:]
		if t == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%w: %q (write e.g. 90d, 12h or 30m)", ErrSyntax, s)
	}
	return days + d, nil
}

// ParseMax reads a max key age and checks its bounds; warning is non-empty for an age
// below WarnBelow (accepted, but rotating that often is for tests and demos).
func ParseMax(s string) (d time.Duration, warning string, err error) {
	d, err = Parse(s)
	if err != nil {
		return 0, "", err
	}
	warning, err = Check(d)
	return d, warning, err
}

// Check bounds a max key age, as ParseMax does.
func Check(d time.Duration) (warning string, err error) {
	switch {
	case d < Min:
		return "", fmt.Errorf("max key age %s is below the minimum %s", Format(d), Format(Min))
	case d > Max:
		return "", fmt.Errorf("max key age %s is above the maximum %s", Format(d), Format(Max))
	case d < WarnBelow:
		return fmt.Sprintf("max key age %s is below 1h: every selected host will rotate that often (fine for a test or a demo)", Format(d)), nil
	}
	return "", nil
}

// Format prints d in the shortest form Parse reads back: whole days as `90d`, days
// and a remainder as `1d12h0m0s`, else Go's form.
func Format(d time.Duration) string {
	if d >= Day {
		days := d / Day
		rest := d % Day
		if rest == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%s", days, rest)
	}
	return d.String()
}

// Human prints an age for people, to the largest unit: `93d`, `5h`, `42s`.
func Human(d time.Duration) string {
	switch {
	case d >= Day:
		return fmt.Sprintf("%dd", d/Day)
	case d >= time.Hour:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d < 0:
		return "0s"
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// Effective is a host's effective max key age: the smallest positive value among
// its own setting and the policies that select it; 0 means no routine rotation.
func Effective(maxes ...time.Duration) time.Duration {
	var out time.Duration
	for _, m := range maxes {
		if m > 0 && (out == 0 || m < out) {
			out = m
		}
	}
	return out
}

// DueAt is when a key made at since reaches max (zero when max is 0).
func DueAt(since time.Time, max time.Duration) time.Time {
	if max <= 0 || since.IsZero() {
		return time.Time{}
	}
	return since.Add(max)
}

// Window is how long before the due time a routine rotation may happen: a tenth of
// the max age, at most a day, at least a second. A daemon picks a random moment in
// [due-Window, due) so that hosts enrolled together do not rotate together.
func Window(max time.Duration) time.Duration {
	w := max / 10
	if w > Day {
		w = Day
	}
	if w < time.Second {
		w = time.Second
	}
	return w
}
