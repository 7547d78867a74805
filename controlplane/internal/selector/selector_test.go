package selector

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	web1 = Host{NodeID: "n-00000000000a", Name: "web-east-1", Tags: []string{"web", "prod"}, OS: "linux", KeyAge: 91 * 24 * time.Hour}
	web2 = Host{NodeID: "n-00000000000b", Name: "web-east-2", Tags: []string{"web"}, OS: "linux", KeyAge: 90 * 24 * time.Hour}
	db1  = Host{NodeID: "n-00000000000c", Name: "db-mirror-1", Tags: []string{"db", "prod", "potentially-affected"}, OS: "linux", KeyAge: 2 * time.Hour}
	mac  = Host{NodeID: "n-00000000000d", Name: "laptop", Tags: nil, OS: "darwin"}
	all  = []Host{web1, web2, db1, mac}
)

func selected(t *testing.T, text string) []string {
	t.Helper()
	s, err := Parse(text)
	if err != nil {
		t.Fatalf("Parse(%q): %v", text, err)
	}
	var names []string
	for _, h := range all {
		if s.Matches(h) {
			names = append(names, h.Name)
		}
	}
	return names
}

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		sel  string
		want string
	}{
		{"all", "web-east-1 web-east-2 db-mirror-1 laptop"},
		{"tags=AnyOf(potentially-affected,prod)", "web-east-1 db-mirror-1"},
		{"tags=AllOf(web,prod)", "web-east-1"},
		{"tags=NoneOf(prod)", "web-east-2 laptop"},
		{"tags=AnyOf(nope)", ""},
		{"nodes=n-00000000000b,n-00000000000d", "web-east-2 laptop"},
		{"name=web-*", "web-east-1 web-east-2"},
		{"name=db-mirror-?", "db-mirror-1"},
		{"os=linux", "web-east-1 web-east-2 db-mirror-1"},
		{"os=Darwin", "laptop"},
		{"tags=AnyOf(web);tags=NoneOf(prod)", "web-east-2"},
		{" tags = AnyOf( web , db ) ; os=linux ; name=*-1 ", "web-east-1 db-mirror-1"},
		{"all;tags=AnyOf(db)", "db-mirror-1"},
		{"key_age>90d", "web-east-1"},
		{"key_age>89d", "web-east-1 web-east-2"},
		{"key_age>1h", "web-east-1 web-east-2 db-mirror-1"},
		{"key_age > 1d12h ; tags=AnyOf(web)", "web-east-1 web-east-2"},
		{"key_age>0s", "web-east-1 web-east-2 db-mirror-1"},
		{"key_age>3h;os=linux", "web-east-1 web-east-2"},
	} {
		if got := strings.Join(selected(t, tc.sel), " "); got != tc.want {
			t.Errorf("%q selects [%s], want [%s]", tc.sel, got, tc.want)
		}
	}
}

func TestCanonicalString(t *testing.T) {
	s, err := Parse(" tags = AnyOf( web , db ) ; os=linux ")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.String(); got != "tags=AnyOf(web,db);os=linux" {
		t.Errorf("String() = %q", got)
	}
	again, err := Parse(s.String())
	if err != nil || again.String() != s.String() {
		t.Errorf("canonical form does not parse back to itself: %q, %v", again.String(), err)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		sel    string
		column int
		msg    string
	}{
		{"", 1, "expected a term"},
		{"   ", 4, "expected a term"},
		{"everything", 1, `unknown term "everything"`},
		{"tags", 5, "expected '=' after tags"},
		{"tags=Any(a)", 6, `expected AnyOf, AllOf or NoneOf after tags=, got "Any"`},
		{"tags=AnyOf", 11, "expected '(' after AnyOf, got the end"},
		{"tags=AnyOf()", 12, `expected a tag, got ")"`},
		{"tags=AnyOf(a,)", 14, `expected a tag, got ")"`},
		{"tags=AnyOf(a", 13, "expected ',' or ')' in AnyOf(...)"},
		{"tags=AnyOf(a b)", 14, "expected ',' or ')'"},
		{"nodes=n-1", 10, `"n-1" is not a node id`},
		{"nodes=", 7, "expected a node id"},
		{"name=", 6, "expected a name or glob"},
		{"name=web-[", 6, `"web-[" is not a valid glob`},
		{"os=", 4, "expected an operating system"},
		{"all;", 5, "expected a term"},
		{"all tags=AnyOf(a)", 5, "expected ';' between terms"},
		{"all,os=linux", 4, `expected ';' between terms or the end of the selector, got ","`},
		{"tags=AnyOf(a);;os=linux", 15, "expected a term"},
		{strings.Repeat("a", MaxLength+1), MaxLength + 1, "longer than"},
		{"key_age", 8, "expected '>' after key_age (as in key_age>90d)"},
		{"key_age<90d", 8, "expected '>' after key_age"},
		{"key_age>", 9, "expected a duration after key_age>"},
		{"key_age>90", 9, `"90" is not a duration: write e.g. key_age>90d`},
		{"os=linux;key_age>ninety", 18, `"ninety" is not a duration`},
		{"key_age=90d", 8, "expected '>' after key_age"},
	} {
		_, err := Parse(tc.sel)
		var pe *Error
		if !errors.As(err, &pe) {
			t.Errorf("Parse(%q) = %v, want a *selector.Error", tc.sel, err)
			continue
		}
		if pe.Column != tc.column || !strings.Contains(pe.Msg, tc.msg) {
			t.Errorf("Parse(%q) = %q at column %d, want %q at column %d", tc.sel, pe.Msg, pe.Column, tc.msg, tc.column)
		}
	}
}

// The parser never panics, every refusal is an *Error whose column lies within the
// text (or just past it), and whatever parses has a canonical form that parses to
// itself and selects the same hosts.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"all", "tags=AnyOf(a,b)", "tags=AllOf(a)", "tags=NoneOf(x,y,z)", "nodes=n-0123456789ab,n-00000000000a",
		"name=web-*", "os=linux", "tags=AnyOf(web);os=linux;name=*-1", " tags = AnyOf( a ) ", "tags=Any(", ";;", "name=[",
		"key_age>90d", "key_age > 12h;tags=AnyOf(prod)", "key_age>", "key_age<1d", "key_age>90", "key_age>1.5d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := Parse(text)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q) returned %T, want *Error", text, err)
			}
			if pe.Column < 1 || pe.Column > len(text)+1 && len(text) <= MaxLength {
				t.Fatalf("Parse(%q): column %d outside the text", text, pe.Column)
			}
			return
		}
		again, err := Parse(s.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", s.String(), text, err)
		}
		for _, h := range all {
			if s.Matches(h) != again.Matches(h) {
				t.Fatalf("%q and its canonical form %q disagree on %s", text, s.String(), h.Name)
			}
		}
	})
}
