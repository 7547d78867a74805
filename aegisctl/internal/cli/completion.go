package cli

import (
	"fmt"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// The scripts ask the binary itself for the words that may come next (urfave/cli's
// hidden --generate-bash-completion), so they never go stale as commands change.
const bashCompletion = `# bash completion for %[1]s; load with: source <(%[1]s completion bash)
_%[2]s_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}"
  local words=("${COMP_WORDS[@]:0:COMP_CWORD}")
  local opts
  if [[ "$cur" == -* ]]; then
    opts=$("${words[@]}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${words[@]}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o default -F _%[2]s_complete %[1]s
`

const zshCompletion = `#compdef %[1]s
# zsh completion for %[1]s; load with: source <(%[1]s completion zsh)
_%[2]s() {
  local -a opts
  local cur="${words[-1]}"
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(_CLI_ZSH_AUTOCOMPLETE_HACK=1 ${words[@]:0:#words[@]-1} "$cur" --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(_CLI_ZSH_AUTOCOMPLETE_HACK=1 ${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  _describe 'values' opts
}
compdef _%[2]s %[1]s
`

func (a *app) completionCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		UsageText: a.name + " completion bash|zsh|fish",
		Description: "Completes commands, subcommands and flags.\n\n" +
			"Example:\n" +
			"  source <(" + a.name + " completion bash)                 # this shell only\n" +
			"  " + a.name + " completion bash > /etc/bash_completion.d/" + a.name + "\n" +
			"  " + a.name + " completion zsh > \"${fpath[1]}/_" + a.name + "\"\n" +
			"  " + a.name + " completion fish > ~/.config/fish/completions/" + a.name + ".fish",
		Action: func(c *ucli.Context) error {
			shell, err := oneArg(c, "SHELL (bash, zsh or fish)")
			if err != nil {
				return err
			}
			fn := strings.ReplaceAll(a.name, "-", "_")
			switch shell {
			case "bash":
				fmt.Fprintf(a.env.Stdout, bashCompletion, a.name, fn)
			case "zsh":
				fmt.Fprintf(a.env.Stdout, zshCompletion, a.name, fn)
			case "fish":
				script, err := c.App.ToFishCompletion()
				if err != nil {
					return err
				}
				fmt.Fprint(a.env.Stdout, script)
			default:
				return usagef("unknown shell %q: bash, zsh or fish", shell)
			}
			return nil
		},
	}
}
