package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func runPlain(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := RunEnv(context.Background(), append([]string{"aegis"}, args...), Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	return out.String(), errb.String(), code
}

func TestCompletionScriptsAndWords(t *testing.T) {
	for shell, want := range map[string]string{
		"bash": "complete -o default -F _aegis_complete aegis",
		"zsh":  "compdef _aegis aegis",
		"fish": "complete -c aegis",
	} {
		out, errOut, code := runPlain("completion", shell)
		if code != 0 || !strings.Contains(out, want) || errOut != "" {
			t.Errorf("completion %s: exit %d stderr %q, want %q in:\n%s", shell, code, errOut, want, out)
		}
	}
	if _, errOut, code := runPlain("completion", "tcsh"); code != exitUsage || !strings.Contains(errOut, `unknown shell "tcsh": bash, zsh or fish`) {
		t.Errorf("tcsh: %d %q", code, errOut)
	}
	// The words themselves come from urfave/cli, which reads os.Args: the real binary is
	// asked in testdata/script/cli_behaviour.txtar.
}

func TestHelpCommand(t *testing.T) {
	viaHelp, _, code := runPlain("help", "edge", "hosts", "delete")
	viaFlag, _, _ := runPlain("edge", "hosts", "delete", "--help")
	if code != 0 || viaHelp != viaFlag || !strings.Contains(viaHelp, "Only a Revoked host can be deleted") {
		t.Fatalf("help edge hosts delete (exit %d):\n%s", code, viaHelp)
	}
	if out, _, code := runPlain("help"); code != 0 || !strings.Contains(out, "aegis help COMMAND...") {
		t.Fatalf("help alone (exit %d):\n%s", code, out)
	}
}
