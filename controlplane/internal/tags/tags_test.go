package tags

import (
	"fmt"
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, s := range []string{"prod", "env:prod", "team/web", "Web-1", "a", "v1.2_3", strings.Repeat("a", 63)} {
		if !Valid(s) {
			t.Errorf("Valid(%q) = false", s)
		}
	}
	for _, s := range []string{"", "-prod", ":x", "a b", "a,b", "a(b", "é", "a;b", "*", strings.Repeat("a", 64)} {
		if Valid(s) {
			t.Errorf("Valid(%q) = true", s)
		}
	}
}

func TestCheck(t *testing.T) {
	if err := Check([]string{"env:prod", "web"}); err != nil {
		t.Fatal(err)
	}
	if err := Check([]string{"ok", "bad tag"}); err == nil || !strings.Contains(err.Error(), `tag "bad tag": a tag is 1-63`) {
		t.Fatalf("got %v", err)
	}
	many := make([]string, Max+1)
	for i := range many {
		many[i] = fmt.Sprintf("t%d", i)
	}
	if err := Check(many); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Fatalf("got %v", err)
	}
	if err := Check(append(many[:Max], many[0])); err != nil {
		t.Fatalf("duplicates counted twice: %v", err)
	}
}
