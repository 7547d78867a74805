package cli

import (
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// completionFlag is the hidden flag urfave/cli answers with the words that may come next;
// the scripts `completion bash|zsh` prints call it.
const completionFlag = "--generate-bash-completion"

// normalizeArgs is the one place the command line is reshaped before urfave/cli sees it:
//
//   - Flags may follow positional arguments on every command (`hosts get NODE -o json`,
//     `exec NODE -o json -- CMD`), as kubectl and gh allow. urfave/cli v2 stops parsing
//     flags at the first argument, so the leaf command's flags (with their values) are
//     moved in front of its arguments. Everything after "--", and for exec and fleet run
//     everything from the remote command's name on, is left exactly as given: it belongs
//     to the remote command.
//   - `help CMD...` (at any level) is `CMD... --help`.
//
// Unknown flags are moved too, so urfave/cli names them ("flag provided but not
// defined") instead of taking them for an argument.
func normalizeArgs(root *ucli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	if args[len(args)-1] == completionFlag {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	cmds := root.Commands
	var leaf *ucli.Command
	path := ""
	// Walk the command path: names of subcommands, and flags given to groups on the way.
	for len(rest) > 0 {
		tok := rest[0]
		if tok == "help" && len(cmds) > 0 {
			path := rest[1:]
			return append(append(out, path...), "--help")
		}
		if strings.HasPrefix(tok, "-") {
			// A flag before the command is complete (e.g. `aegis --help`, `edge -h`).
			out = append(out, tok)
			rest = rest[1:]
			continue
		}
		c := findCommand(cmds, tok)
		if c == nil {
			break
		}
		out = append(out, tok)
		rest = rest[1:]
		leaf = c
		path = strings.TrimSpace(path + " " + c.Name)
		cmds = c.Subcommands
		if len(cmds) == 0 {
			break
		}
	}
	if leaf == nil || len(leaf.Subcommands) > 0 {
		return append(out, rest...)
	}
	own, runsCommand := remoteCommandAfter[path]
	var flags, positional, tail []string
	for i := 0; i < len(rest); i++ {
		tok := rest[i]
		if tok == "--" {
			tail = rest[i:]
			break
		}
		if len(tok) < 2 || tok[0] != '-' {
			if runsCommand && len(positional) == own {
				// The remote command's name: it and everything after it are its own.
				tail = rest[i:]
				break
			}
			positional = append(positional, tok)
			continue
		}
		flags = append(flags, tok)
		if !strings.Contains(tok, "=") && takesValue(leaf, tok) && i+1 < len(rest) {
			i++
			flags = append(flags, rest[i])
		}
	}
	out = append(out, flags...)
	out = append(out, positional...)
	return append(out, tail...)
}

// remoteCommandAfter names the commands that end with a command to run elsewhere, and
// how many of their own arguments come first (`edge exec NODE CMD ARGS...`): from the
// command's name on, nothing is ours, "--" or not.
var remoteCommandAfter = map[string]int{
	"edge exec":      1,
	"edge fleet run": 0,
}

func findCommand(cmds []*ucli.Command, name string) *ucli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether tok (`-o`, `--target`) names one of c's flags that takes
// a value; a boolean flag or an unknown one takes none.
func takesValue(c *ucli.Command, tok string) bool {
	name := strings.TrimLeft(tok, "-")
	for _, f := range c.Flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if dg, ok := f.(ucli.DocGenerationFlag); ok {
				return dg.TakesValue()
			}
			return true
		}
	}
	return false
}
