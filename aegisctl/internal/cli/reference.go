package cli

import (
	"fmt"
	"regexp"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// referenceHeader opens docs/cli-reference.md; the rest is rendered from the command
// tree itself, so the reference cannot drift from the CLI.
const referenceHeader = `<!-- Generated from aegisctl's own command definitions: do not edit.
     Regenerate with: make docs  (go test ./aegisctl/internal/cli -run TestReferenceDocs -update) -->

# Aegis Edge CLI reference

Every command and flag of ` + "`aegisctl`" + `, also installed as ` + "`aegis`" + ` (the name used
below). Host-side commands (` + "`edge enroll`, `edge status`, `edge keys rotate`, `edge token refresh`,\n`edge logout`" + `) talk to the
local edged, or work on the state directory when it is stopped; operator commands use
the profile saved by ` + "`aegis login`" + `. ` + "`aegis help COMMAND...`" + ` prints any section below.
Flags may come before or after a command's arguments. The guide to read first is
[edge-key-rotation.md](edge-key-rotation.md); fleet runs are explained in
[fleet-operations.md](fleet-operations.md).

`

// Reference renders the command tree as Markdown (docs/cli-reference.md) and as a man
// page (docs/man/aegisctl.1), under the name aegis.
func Reference() (markdown, man string, err error) {
	root := referenceApp()
	var b strings.Builder
	b.WriteString(referenceHeader)
	writeCommandMD(&b, "aegis", root.Usage, root.UsageText, root.Description, root.Flags)
	for _, c := range root.Commands {
		walkMD(&b, "aegis", c)
	}
	man, err = root.ToMan()
	if err != nil {
		return "", "", err
	}
	return tidyMarkdown(b.String()), man, nil
}

func walkMD(b *strings.Builder, parent string, c *ucli.Command) {
	if c.Hidden {
		return
	}
	path := parent + " " + c.Name
	writeCommandMD(b, path, c.Usage, c.UsageText, c.Description, c.Flags)
	for _, s := range c.Subcommands {
		walkMD(b, path, s)
	}
}

// writeCommandMD is one command: what it does, its synopsis, its help text as the
// terminal shows it, and a table of its flags.
func writeCommandMD(b *strings.Builder, path, usage, usageText, description string, flags []ucli.Flag) {
	fmt.Fprintf(b, "## %s\n\n%s\n\n", path, usage)
	if usageText != "" {
		fmt.Fprintf(b, "```text\n%s\n```\n\n", usageText)
	}
	if description != "" {
		fmt.Fprintf(b, "```text\n%s\n```\n\n", description)
	}
	var rows []string
	for _, f := range flags {
		df, ok := f.(ucli.DocGenerationFlag)
		if !ok {
			continue
		}
		if vf, ok := f.(ucli.VisibleFlag); ok && !vf.IsVisible() {
			continue
		}
		var names []string
		for _, n := range f.Names() {
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			names = append(names, "`"+dash+n+"`")
		}
		def := df.GetDefaultText()
		if def == "" && df.TakesValue() {
			def = df.GetValue()
		}
		if def == "" || def == `""` {
			def = "-"
		}
		use := df.GetUsage()
		if env := df.GetEnvVars(); len(env) > 0 {
			use += " (env " + strings.Join(env, ", ") + ")"
		}
		if rf, ok := f.(ucli.RequiredFlag); ok && rf.IsRequired() {
			use += " (required)"
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s |", strings.Join(names, ", "), strings.ReplaceAll(def, "|", "\\|"), strings.ReplaceAll(use, "|", "\\|")))
	}
	if len(rows) > 0 {
		b.WriteString("| flag | default | what it does |\n|---|---|---|\n")
		b.WriteString(strings.Join(rows, "\n") + "\n\n")
	}
}

func referenceApp() *ucli.App {
	a := &app{name: "aegis", env: Env{Getenv: func(string) string { return "" }}}
	root := a.newApp()
	root.HelpName = "aegis"
	return root
}

var pandocTitle = regexp.MustCompile(`(?m)\A% .*\n+`)

// tidyMarkdown drops the pandoc title line urfave/cli starts with (GitHub shows it as
// text) and trailing spaces.
func tidyMarkdown(md string) string {
	md = pandocTitle.ReplaceAllString(md, "")
	lines := strings.Split(md, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n") + "\n"
}
