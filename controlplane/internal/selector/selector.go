// Package selector owns target selectors, the one language operators use to name a
// set of hosts (`hosts list --target`, fleet runs): `all`, `tags=AnyOf(a,b)`,
// `tags=AllOf(a,b)`, `tags=NoneOf(a)`, `nodes=ID,ID`, `name=GLOB`, `os=NAME`,
// `key_age>DURATION` (`90d`, `12h`: keys older than that), joined by `;` meaning AND. Parse either returns a Selector or an *Error naming the column
// and what was expected there, so a malformed selector starts nothing. Matching is
// pure: tenant scoping is the caller's (the store query), never the selector's.
package selector

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/api/keyage"
)

// MaxLength bounds a selector's text; a longer one is refused before parsing.
const MaxLength = 4096

// Error is a parse failure at a 1-based column of the selector text.
type Error struct {
	Column int
	Msg    string
}

func (e *Error) Error() string { return fmt.Sprintf("at column %d: %s", e.Column, e.Msg) }

// Host is what a selector looks at.
type Host struct {
	NodeID string
	Name   string
	Tags   []string
	OS     string
	// KeyAge is how old the host's current key is, at the caller's now.
	KeyAge time.Duration
}

// Selector is a parsed target: the AND of its terms. The zero value (no terms)
// matches every host, as `all` does.
type Selector struct {
	terms []term
	text  string
}

// String is the selector in canonical form (what was parsed, spaces removed).
func (s Selector) String() string {
	if s.text == "" {
		return "all"
	}
	return s.text
}

type kind int

const (
	kAll kind = iota
	kAnyOf
	kAllOf
	kNoneOf
	kNodes
	kName
	kOS
	kKeyAgeOver
)

type term struct {
	kind   kind
	values []string // tags, node ids; for kName one glob, for kOS one name
	age    time.Duration
}

// Matches reports whether h is selected.
func (s Selector) Matches(h Host) bool {
	for _, t := range s.terms {
		if !t.matches(h) {
			return false
		}
	}
	return true
}

func (t term) matches(h Host) bool {
	switch t.kind {
	case kAll:
		return true
	case kAnyOf:
		return slices.ContainsFunc(t.values, func(v string) bool { return slices.Contains(h.Tags, v) })
	case kAllOf:
		return !slices.ContainsFunc(t.values, func(v string) bool { return !slices.Contains(h.Tags, v) })
	case kNoneOf:
		return !slices.ContainsFunc(t.values, func(v string) bool { return slices.Contains(h.Tags, v) })
	case kNodes:
		return slices.Contains(t.values, h.NodeID)
	case kName:
		ok, _ := path.Match(t.values[0], h.Name) // validated at parse time
		return ok
	case kOS:
		return strings.EqualFold(t.values[0], h.OS)
	case kKeyAgeOver:
		return h.KeyAge > t.age
	}
	return false
}

// Parse reads a selector. Spaces around terms, `;`, `,` and parentheses are allowed;
// an empty text is an error (say `all`).
func Parse(text string) (Selector, error) {
	if len(text) > MaxLength {
		return Selector{}, &Error{Column: MaxLength + 1, Msg: fmt.Sprintf("selector is longer than %d characters", MaxLength)}
	}
	p := &parser{src: text}
	var sel Selector
	var canon []string
	for {
		p.space()
		start := p.pos
		t, err := p.term()
		if err != nil {
			return Selector{}, err
		}
		sel.terms = append(sel.terms, t)
		canon = append(canon, strings.ReplaceAll(strings.TrimSpace(text[start:p.pos]), " ", ""))
		p.space()
		if p.eof() {
			break
		}
		if !p.accept(';') {
			return Selector{}, p.errorf("expected ';' between terms or the end of the selector, got %s", p.found())
		}
	}
	sel.text = strings.Join(canon, ";")
	return sel, nil
}

type parser struct {
	src string
	pos int
}

func (p *parser) eof() bool { return p.pos >= len(p.src) }

func (p *parser) space() {
	for !p.eof() && (p.src[p.pos] == ' ' || p.src[p.pos] == '\t') {
		p.pos++
	}
}

func (p *parser) accept(c byte) bool {
	if !p.eof() && p.src[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

func (p *parser) errorf(format string, args ...any) *Error {
	return &Error{Column: p.pos + 1, Msg: fmt.Sprintf(format, args...)}
}

// found describes what stands at the current position, for error messages.
func (p *parser) found() string {
	if p.eof() {
		return "the end of the selector"
	}
	end := p.pos
	for end < len(p.src) && end-p.pos < 16 && !strings.ContainsRune(" ;,()=", rune(p.src[end])) {
		end++
	}
	if end == p.pos {
		end++
	}
	return fmt.Sprintf("%q", p.src[p.pos:end])
}

// word reads a run of characters allowed in keys, set operators, tags, ids and
// names; glob characters only when glob is set.
func (p *parser) word(glob bool) string {
	start := p.pos
	for !p.eof() && wordChar(p.src[p.pos], glob) {
		p.pos++
	}
	return p.src[start:p.pos]
}

func wordChar(c byte, glob bool) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '-' || c == '_' || c == '.' || c == ':' || c == '/':
		return true
	case glob && (c == '*' || c == '?' || c == '[' || c == ']' || c == '^' || c == '\\'):
		return true
	}
	return false
}

func (p *parser) term() (term, error) {
	keyCol := p.pos
	key := p.word(false)
	if key == "all" {
		return term{kind: kAll}, nil
	}
	switch key {
	case "tags", "nodes", "name", "os":
	case "key_age":
		return p.keyAge()
	case "":
		return term{}, p.errorf("expected a term (all, tags=, nodes=, name=, os= or key_age>), got %s", p.found())
	default:
		return term{}, &Error{Column: keyCol + 1, Msg: fmt.Sprintf("unknown term %q: expected all, tags=, nodes=, name=, os= or key_age>", key)}
	}
	p.space()
	if !p.accept('=') {
		return term{}, p.errorf("expected '=' after %s, got %s", key, p.found())
	}
	p.space()
	switch key {
	case "tags":
		return p.tags()
	case "nodes":
		ids, err := p.list(false, "a node id")
		if err != nil {
			return term{}, err
		}
		for _, id := range ids {
			if !validNodeID(id) {
				return term{}, p.errorf("%q is not a node id (n- and 12 hex digits)", id)
			}
		}
		return term{kind: kNodes, values: ids}, nil
	case "name":
		col := p.pos
		g := p.word(true)
		if g == "" {
			return term{}, p.errorf("expected a name or glob after name=, got %s", p.found())
		}
		if _, err := path.Match(g, ""); err != nil {
			return term{}, &Error{Column: col + 1, Msg: fmt.Sprintf("%q is not a valid glob", g)}
		}
		return term{kind: kName, values: []string{g}}, nil
	default: // os
		v := p.word(false)
		if v == "" {
			return term{}, p.errorf("expected an operating system after os= (e.g. linux), got %s", p.found())
		}
		return term{kind: kOS, values: []string{v}}, nil
	}
}

// keyAge reads `>DURATION` after key_age: hosts whose key is older than DURATION.
func (p *parser) keyAge() (term, error) {
	p.space()
	if !p.accept('>') {
		return term{}, p.errorf("expected '>' after key_age (as in key_age>90d), got %s", p.found())
	}
	p.space()
	col := p.pos
	v := p.word(false)
	if v == "" {
		return term{}, p.errorf("expected a duration after key_age> (e.g. 90d, 12h), got %s", p.found())
	}
	d, err := keyage.Parse(v)
	if err != nil {
		return term{}, &Error{Column: col + 1, Msg: fmt.Sprintf("%q is not a duration: write e.g. key_age>90d or key_age>12h", v)}
	}
	return term{kind: kKeyAgeOver, age: d}, nil
}

func (p *parser) tags() (term, error) {
	col := p.pos
	op := p.word(false)
	var k kind
	switch op {
	case "AnyOf":
		k = kAnyOf
	case "AllOf":
		k = kAllOf
	case "NoneOf":
		k = kNoneOf
	default:
		return term{}, &Error{Column: col + 1, Msg: fmt.Sprintf("expected AnyOf, AllOf or NoneOf after tags=, got %s", quoteOrEnd(op))}
	}
	p.space()
	if !p.accept('(') {
		return term{}, p.errorf("expected '(' after %s, got %s", op, p.found())
	}
	p.space()
	vals, err := p.list(false, "a tag")
	if err != nil {
		return term{}, err
	}
	p.space()
	if !p.accept(')') {
		return term{}, p.errorf("expected ',' or ')' in %s(...), got %s", op, p.found())
	}
	return term{kind: k, values: vals}, nil
}

// list reads item (',' item)*.
func (p *parser) list(glob bool, what string) ([]string, error) {
	var out []string
	for {
		p.space()
		v := p.word(glob)
		if v == "" {
			return nil, p.errorf("expected %s, got %s", what, p.found())
		}
		out = append(out, v)
		p.space()
		if !p.accept(',') {
			return out, nil
		}
	}
}

func quoteOrEnd(s string) string {
	if s == "" {
		return "nothing"
	}
	return fmt.Sprintf("%q", s)
}

func validNodeID(s string) bool {
	if len(s) != 14 || !strings.HasPrefix(s, "n-") {
		return false
	}
	for _, c := range s[2:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
