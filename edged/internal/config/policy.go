package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/aegis-edge/aegis/edged/internal/policy"
	"go.yaml.in/yaml/v3"
)

// lineError is a problem inside a nested section, already naming the full key
// (security_contexts.ops.cmd.run[2].args) and its line.
type lineError struct {
	line int
	key  string
	msg  string
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %s: %s", e.line, e.key, e.msg) }

func errAt(n *yaml.Node, key, format string, args ...any) error {
	return &lineError{line: n.Line, key: key, msg: fmt.Sprintf(format, args...)}
}

// mapping walks a YAML mapping, refusing duplicate keys (a second rule list for the
// same tool would otherwise silently replace the first).
func mapping(n *yaml.Node, key string, each func(k, v *yaml.Node) error) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return errAt(n, key, "want a mapping")
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return errAt(k, key, "want a plain key")
		}
		if seen[k.Value] {
			return errAt(k, key+"."+k.Value, "given twice")
		}
		seen[k.Value] = true
		if err := each(k, v); err != nil {
			return err
		}
	}
	return nil
}

func scalar(n *yaml.Node, key string) (string, error) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", errAt(n, key, "want a single value")
	}
	return n.Value, nil
}

func stringList(n *yaml.Node, key string) ([]string, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, errAt(n, key, "want a list like [a, b]")
	}
	out := make([]string, 0, len(n.Content))
	for i, e := range n.Content {
		s, err := scalar(e, fmt.Sprintf("%s[%d]", key, i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func decodeTools(n *yaml.Node, t *Tools) error {
	return mapping(n, "tools", func(k, v *yaml.Node) error {
		key := "tools." + k.Value
		switch k.Value {
		case "max_output_bytes":
			var b int64
			if v.Kind != yaml.ScalarNode || v.Decode(&b) != nil {
				return errAt(k, key, "%q is not a whole number of bytes", v.Value)
			}
			t.MaxOutputBytes = &b
		case "default_deadline":
			d, err := decodeDuration(v)
			if err != nil {
				return errAt(k, key, "%s", err)
			}
			t.DefaultDeadline = d
		default:
			return errAt(k, key, "unknown setting (known: max_output_bytes, default_deadline)")
		}
		return nil
	})
}

// decodeContexts reads security_contexts. Names and rules are checked for shape
// here (with lines); policy.New checks meaning once the whole file is read.
func decodeContexts(n *yaml.Node) (map[string]policy.Context, error) {
	out := map[string]policy.Context{}
	err := mapping(n, "security_contexts", func(k, v *yaml.Node) error {
		c, err := decodeContext(v, "security_contexts."+k.Value)
		out[k.Value] = c
		return err
	})
	return out, err
}

func decodeContext(n *yaml.Node, key string) (policy.Context, error) {
	c := policy.Context{Rules: map[string][]policy.Rule{}}
	known := append(slices.Clone(policy.Tools), "cwd", "env_allow")
	err := mapping(n, key, func(k, v *yaml.Node) error {
		key := key + "." + k.Value
		switch {
		case k.Value == "cwd":
			s, err := scalar(v, key)
			c.Cwd = s
			return err
		case k.Value == "env_allow":
			s, err := stringList(v, key)
			c.EnvAllow = s
			return err
		case slices.Contains(policy.Tools, k.Value):
			rules, err := decodeRules(v, key)
			c.Rules[k.Value] = rules
			return err
		}
		return errAt(k, key, "unknown key (known: %s)", strings.Join(known, ", "))
	})
	return c, err
}

func decodeRules(n *yaml.Node, key string) ([]policy.Rule, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, errAt(n, key, "want a list of rules (- command: /usr/bin/uptime)")
	}
	rules := make([]policy.Rule, 0, len(n.Content))
	for i, e := range n.Content {
		rkey := fmt.Sprintf("%s[%d]", key, i)
		r := policy.Rule{AnyArgs: true}
		hasCommand := false
		err := mapping(e, rkey, func(k, v *yaml.Node) error {
			key := rkey + "." + k.Value
			switch k.Value {
			case "command":
				s, err := scalar(v, key)
				if err == nil && !strings.HasPrefix(s, "/") {
					err = errAt(v, key, "%q: want an absolute path or a glob starting with /", s)
				}
				r.Command, hasCommand = s, true
				return err
			case "args":
				s, err := stringList(v, key)
				r.Args, r.AnyArgs = s, false
				return err
			}
			return errAt(k, key, "unknown key (known: command, args)")
		})
		if err != nil {
			return nil, err
		}
		if !hasCommand || e.Kind != yaml.MappingNode {
			return nil, errAt(e, rkey, "a rule needs a command")
		}
		rules = append(rules, r)
	}
	return rules, nil
}
