// Package tags owns the one rule for what a host tag is. Enrollment tokens hand tags to
// the hosts that enroll with them, `hosts tag` changes them, and selectors
// (`tags=AnyOf(..)`) match them literally, so all three must agree on one rule.
package tags

import "fmt"

// Max bounds the tags of one host (and so of one enrollment token).
const Max = 64

// Rule says in words what Valid checks, for error messages and help.
const Rule = "a tag is 1-63 letters, digits, '.', '_', ':', '/' or '-', starting with a letter or digit"

// Valid reports whether t is a tag. The characters are exactly those a selector's tag
// list accepts, so every valid tag can be selected.
func Valid(t string) bool {
	if len(t) == 0 || len(t) > 63 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == ':' || c == '/' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Check returns an error naming the first invalid tag of ts, or one saying there are
// more than Max distinct tags.
func Check(ts []string) error {
	seen := map[string]bool{}
	for _, t := range ts {
		if !Valid(t) {
			return fmt.Errorf("tag %q: %s", t, Rule)
		}
		seen[t] = true
	}
	if len(seen) > Max {
		return fmt.Errorf("%d tags: a host has at most %d", len(seen), Max)
	}
	return nil
}
