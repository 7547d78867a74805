//go:build unix

// The doc tests run the docs' shell blocks with bash in a process group of their own.

package aegisctl_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDocShellBlocks runs every shell block of README.md and docs/*.md against the real
// binaries, so a doc that drifts from the product fails CI.
//
// The rules a doc follows:
//   - A fenced block tagged sh is run; text is output shown to the reader (not run);
//     yaml, json and the like are files. A block tagged bash, shell or console, or an
//     untagged block, is refused: say which it is.
//   - The sh blocks of one file run in order in one bash (`set -euo pipefail`), so a
//     variable set in one block is there in the next; whatever they start in the
//     background is stopped at the end.
//   - docs/*.md run on a prepared machine: a control plane, the reader logged in as its
//     admin, and four enrolled, Connected hosts with their daemons: web-east-1 (prod,web;
//     the reader's own host, state dir ~/.aegis/edge), web-east-2 (prod,web),
//     db-mirror-1 (prod,potentially-affected) and lost-laptop (laptop). A doc that
//     starts from nothing says so with `<!-- doc-test: fresh -->`. README.md always
//     starts from nothing, in an empty directory, as a reader pasting it would.
//   - A line `! CMD` must fail (bash alone would ignore its status under set -e): it is
//     run as `if CMD; then exit 1; fi`.
//   - The only other rewrites: the default address 127.0.0.1:7443 becomes a free port (tests
//     share the machine; AEGIS_LISTEN carries it to `controlplane serve`), and
//     `make build && ` is dropped (the binaries are already built and on PATH).
//   - A text block right after an sh block (only blank lines between) is that block's
//     output as the product prints it: each of its lines must be a line of what the
//     block printed, with ids, fingerprints, times and durations masked, spaces
//     collapsed and the test's home shown as /home/you (order may differ: the hosts of
//     one wave finish in any order).
//   - `<!-- doc-test: skip: REASON -->` on the line before a block skips it; the reason
//     is required and printed.
//
// It also checks that every relative link of those files resolves inside the clone.
func TestDocShellBlocks(t *testing.T) {
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{filepath.Join(repo, "README.md")}, files...)
	for _, f := range files {
		rel, _ := filepath.Rel(repo, f)
		doc, err := parseDoc(f)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			continue
		}
		checkLinks(t, f, rel)
		if len(doc.blocks) == 0 {
			continue
		}
		t.Run(rel, func(t *testing.T) {
			t.Parallel()
			runDoc(t, rel, doc, rel == "README.md")
		})
	}
}

type docBlock struct {
	line int
	text string
	// output is the text block right after it, if any: what the product prints.
	output     string
	outputLine int
}

type parsedDoc struct {
	fresh  bool
	blocks []docBlock
}

var runnableTags = map[string]bool{"sh": true}
var shownTags = map[string]bool{"text": true, "yaml": true, "json": true, "ini": true, "go": true, "promql": true, "diff": true}

func parseDoc(path string) (parsedDoc, error) {
	f, err := os.Open(path)
	if err != nil {
		return parsedDoc{}, err
	}
	defer f.Close()
	var (
		doc        parsedDoc
		in         bool
		tag        string
		start      int
		body       []string
		prev, skip string
		n          int
		// lastSh is the closing line of the last sh block; prevEnd the last line that
		// was not blank, so a text block "directly after" allows only blank lines.
		lastSh, prevEnd int
		follows         bool
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		if !in && strings.TrimSpace(line) == "<!-- doc-test: fresh -->" {
			doc.fresh = true
		}
		if strings.HasPrefix(line, "```") {
			if !in {
				follows = lastSh > 0 && prevEnd == lastSh
				in, tag, start, body = true, strings.TrimSpace(strings.TrimPrefix(line, "```")), n, nil
				skip = ""
				if m := regexp.MustCompile(`^<!-- doc-test: skip(?::\s*(.*?))?\s*-->$`).FindStringSubmatch(strings.TrimSpace(prev)); m != nil {
					if strings.TrimSpace(m[1]) == "" {
						return doc, fmt.Errorf("line %d: a doc-test skip needs a reason: <!-- doc-test: skip: REASON -->", n)
					}
					skip = m[1]
				}
				switch {
				case runnableTags[tag], shownTags[tag]:
				case tag == "":
					return doc, fmt.Errorf("line %d: untagged code block: tag it sh (run by this test) or text (output)", n)
				default:
					return doc, fmt.Errorf("line %d: code block tagged %q: tag shell commands sh (run by this test), output text", n, tag)
				}
			} else {
				in = false
				switch {
				case runnableTags[tag] && skip != "":
					fmt.Printf("docs: %s:%d skipped: %s\n", filepath.Base(path), start, skip)
					lastSh = -1
				case runnableTags[tag]:
					doc.blocks = append(doc.blocks, docBlock{line: start, text: strings.Join(body, "\n")})
					lastSh = n
				case tag == "text" && follows:
					b := &doc.blocks[len(doc.blocks)-1]
					b.output, b.outputLine = strings.Join(body, "\n"), start
					lastSh = -1
				default:
					lastSh = -1
				}
			}
			prev = line
			prevEnd = n
			continue
		}
		if in {
			body = append(body, line)
			continue
		}
		if strings.TrimSpace(line) != "" {
			prevEnd = n
		}
		if indentedCommand.MatchString(line) {
			return doc, fmt.Errorf("line %d: an indented command escapes this test: put it in a fenced sh block", n)
		}
		if strings.TrimSpace(line) != "" {
			prev = line
		}
	}
	if in {
		return doc, fmt.Errorf("line %d: code block never closed", start)
	}
	return doc, sc.Err()
}

var indentedCommand = regexp.MustCompile(`^(    |\t)(aegis|aegisctl|edged|controlplane|make) `)

var mustFail = regexp.MustCompile(`(?m)^! (.*)$`)

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// checkLinks: every relative link resolves to a file or directory of the clone.
func checkLinks(t *testing.T, path, rel string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mdLink.FindAllStringSubmatch(string(raw), -1) {
		target := m[1]
		if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") || strings.HasPrefix(target, "#") {
			continue
		}
		target, _, _ = strings.Cut(target, "#")
		if _, err := os.Stat(filepath.Join(filepath.Dir(path), target)); err != nil {
			t.Errorf("%s: the link %q does not resolve inside the clone", rel, m[1])
		}
	}
}

// prelude prepares the machine docs/*.md assume.
const prelude = `
export CP_URL=https://127.0.0.1:$CP_PORT
controlplane serve --listen 127.0.0.1:$CP_PORT --data-dir "$WORK/cp" --heartbeat-interval 1s >"$WORK/controlplane.log" 2>&1 &
until [ -s "$WORK/cp/admin.token" ] && aegis login --server "$CP_URL" --token-file "$WORK/cp/admin.token" --ca-file "$WORK/cp/ca.crt" >/dev/null 2>&1; do
  kill -0 $! 2>/dev/null || { echo "the control plane exited" >&2; exit 1; }
  sleep 0.2
done
doc_enroll() {
  local t; t=$(aegis edge enrollment-tokens create --tags "$2" --name "$1")
  aegis edge enroll --token "$t" --name "$1" --state-dir "$3" >/dev/null
  edged run --state-dir "$3" >"$WORK/$1.log" 2>&1 &
}
doc_enroll web-east-1 prod,web "$HOME/.aegis/edge"
doc_enroll web-east-2 prod,web "$WORK/hosts/web-east-2"
doc_enroll db-mirror-1 prod,potentially-affected "$WORK/hosts/db-mirror-1"
doc_enroll lost-laptop laptop "$WORK/hosts/lost-laptop"
until [ "$(aegis edge hosts list | grep -c ' Connected ')" = 4 ]; do sleep 0.2; done
unset -f doc_enroll
`

func runDoc(t *testing.T, rel string, doc parsedDoc, readme bool) {
	work, err := os.MkdirTemp(shortTemp(), "aegisdoc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	home := filepath.Join(work, "home")
	cwd := filepath.Join(work, "cwd")
	for _, d := range []string{home, cwd} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	script.WriteString("set -euo pipefail\nexec 3>&1\n")
	if !readme && !doc.fresh {
		script.WriteString("echo prelude >\"$WORK/.block\"\n" + prelude)
	}
	for _, b := range doc.blocks {
		text := strings.ReplaceAll(b.text, "127.0.0.1:7443", "127.0.0.1:"+strconv.Itoa(port))
		text = strings.ReplaceAll(text, "make build && ", "")
		text = mustFail.ReplaceAllString(text, "if $1; then echo 'doc-test: this command was expected to fail' >&2; exit 1; fi")
		// Each block's output goes to its own file (then to the log), to compare with the
		// output the doc shows; fd 3 is the log.
		fmt.Fprintf(&script, "echo %d >\"$WORK/.block\"\necho '$ # %s:%d'\nexec >\"$WORK/block-%d.out\" 2>&1\n%s\nexec >&3 2>&3\ncat \"$WORK/block-%d.out\"\n",
			b.line, rel, b.line, b.line, text, b.line)
	}
	script.WriteString("echo done >\"$WORK/.block\"\n")
	scriptPath := filepath.Join(work, "doc.sh")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(work, "out.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", scriptPath)
	cmd.Dir = cwd
	cmd.Env = []string{
		"PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + home, "WORK=" + work, "CP_PORT=" + strconv.Itoa(port), "LANG=C.UTF-8", "TERM=dumb",
		// The default address, moved: `controlplane serve` without --listen reads it.
		"AEGIS_LISTEN=127.0.0.1:" + strconv.Itoa(port),
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: what the blocks start in the background is stopped with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	runErr := cmd.Run()
	stopGroup(cmd.Process.Pid)
	if keep := os.Getenv("AEGIS_DOCTEST_KEEP"); keep != "" {
		// To copy real output into a doc's text blocks.
		log, _ := os.ReadFile(out.Name())
		_ = os.WriteFile(filepath.Join(keep, strings.ReplaceAll(rel, "/", "_")+".log"), log, 0o600)
	}

	if runErr != nil {
		last, _ := os.ReadFile(filepath.Join(work, ".block"))
		log, _ := os.ReadFile(out.Name())
		where := strings.TrimSpace(string(last))
		if _, err := strconv.Atoi(where); err == nil {
			where = rel + ":" + where
		}
		var xe *exec.ExitError
		if errors.As(runErr, &xe) || ctx.Err() != nil {
			t.Fatalf("the shell block at %s failed (%v); its output, then the run's:\n%s", where, orTimeout(runErr, ctx), tail(string(log), 60))
		}
		t.Fatal(runErr)
	}
	if t.Failed() {
		return
	}
	// The outputs shown are what the product prints: every line of a text block right
	// after an sh block is a line of that block's output, once the values that differ
	// from run to run (ids, fingerprints, times, durations, the reader's home) are
	// masked and spaces collapsed. Lines may come in another order (hosts of a wave).
	checked := 0
	for _, b := range doc.blocks {
		if b.output == "" {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(work, fmt.Sprintf("block-%d.out", b.line)))
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, l := range strings.Split(strings.ReplaceAll(string(raw), home, "/home/you"), "\n") {
			got[maskVolatile(l)] = true
		}
		for i, l := range strings.Split(b.output, "\n") {
			if strings.TrimSpace(l) == "" {
				continue
			}
			if !got[maskVolatile(l)] {
				t.Errorf("%s:%d: the product no longer prints this line (the block at line %d printed:\n%s)\n  %s",
					rel, b.outputLine+1+i, b.line, tail(string(raw), 30), l)
			}
		}
		checked++
	}
	t.Logf("%d shell blocks of %s ran; %d shown outputs match", len(doc.blocks), rel, checked)
}

var volatile = []struct {
	re   *regexp.Regexp
	mask string
}{
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`), "TIME"},
	{regexp.MustCompile(`SHA256:[A-Za-z0-9+/]{43}`), "FINGERPRINT"},
	{regexp.MustCompile(`\bn-[0-9a-f]{12}\b`), "NODE"},
	{regexp.MustCompile(`\bfr-[0-9a-f]{16}\b`), "RUN"},
	{regexp.MustCompile(`\bt-[0-9a-f]{8}\b`), "TENANT"},
	{regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`), "UUID"},
	{regexp.MustCompile(`\b\d+(\.\d+)?(ms|s|m|h|d)\b`), "DURATION"},
	{regexp.MustCompile(`\s+`), " "},
}

func maskVolatile(l string) string {
	for _, v := range volatile {
		l = v.re.ReplaceAllString(l, v.mask)
	}
	return strings.TrimSpace(l)
}

func orTimeout(err error, ctx context.Context) error {
	if ctx.Err() != nil {
		return fmt.Errorf("timed out: %w", ctx.Err())
	}
	return err
}

// stopGroup asks every process of the group to stop, as Ctrl-C on a terminal would,
// waits for them, and kills what is left after 15s.
func stopGroup(pgid int) {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
