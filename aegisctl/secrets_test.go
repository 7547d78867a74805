package aegisctl_test

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/rogpeppe/go-internal/testscript"
)

// LogDir, under $WORK, is where the wrappers of controlplane and edged copy
// everything the real binaries write, one file per process.
const logDir = "logs"

// writeLogWrapper makes path run real with the same arguments, stdin, exit status
// and pid (exec), with its stdout and stderr passed through unchanged and also
// appended to $WORK/logs/<name>.<pid>.log, so that nosecrets can read what every
// daemon of a script said, background ones included, while they still run.
func writeLogWrapper(path, real string) error {
	script := fmt.Sprintf(`#!/bin/bash
log="${WORK:?}/%s/$(basename "$0").$$.log"
mkdir -p "${WORK}/%s"
exec %q "$@" > >(tee -a "$log") 2> >(tee -a "$log" >&2)
`, logDir, logDir, real)
	return os.WriteFile(path, []byte(script), 0o755)
}

var (
	secretsMu sync.Mutex
	// secrets remembers, per running script, every secret seen so far: a later
	// logout or rotation removes files whose contents must still never be logged.
	secrets = map[*testscript.TestScript][]string{}
)

var (
	// <hex id>.<hex secret>[...]: API tokens, the admin token, enrollment tokens.
	hexSecretRE = regexp.MustCompile(`[0-9a-f]{8,}\.([0-9a-f]{32,})`)
	// A JWS: node tokens.
	jwsRE = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.([A-Za-z0-9_-]{40,})`)
)

// rememberSecrets records every token-shaped string in text: the whole token, and
// the part that must stay secret even when logged alone.
func rememberSecrets(ts *testscript.TestScript, text string) {
	var found []string
	for _, m := range hexSecretRE.FindAllStringSubmatch(text, -1) {
		found = append(found, m[0], m[1])
	}
	for _, m := range jwsRE.FindAllStringSubmatch(text, -1) {
		found = append(found, m[0], m[1])
	}
	secretsMu.Lock()
	defer secretsMu.Unlock()
	for _, f := range found {
		if !slices.Contains(secrets[ts], f) {
			secrets[ts] = append(secrets[ts], f)
		}
	}
}

// nosecrets: no secret this script has created appears in anything the controlplane
// and edged processes wrote (running or finished), nor in any *.log under $WORK.
// The secrets are read afresh from $WORK (admin.token, every node.token and
// node.key, archived and pending ones included) and added to those captured with
// stdoutenv and by earlier nosecrets calls; call it before a logout removes keys,
// and at the end.
func cmdNoSecrets(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: nosecrets")
	}
	work := ts.Getenv("WORK")
	var logs []string
	ts.Check(filepath.WalkDir(work, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return nil
		}
		name := d.Name()
		switch {
		case strings.HasSuffix(name, ".log"):
			logs = append(logs, path)
		case name == "admin.token", strings.HasPrefix(name, "node.token"):
			raw, err := os.ReadFile(path)
			ts.Check(err)
			rememberSecrets(ts, string(raw))
		case strings.HasSuffix(name, ".key") || strings.HasPrefix(name, "node.key"):
			raw, err := os.ReadFile(path)
			ts.Check(err)
			sc := bufio.NewScanner(strings.NewReader(string(raw)))
			for sc.Scan() {
				// The PEM's base64 lines are the key itself.
				if line := strings.TrimSpace(sc.Text()); len(line) >= 40 && !strings.HasPrefix(line, "-----") {
					secretsMu.Lock()
					if !slices.Contains(secrets[ts], line) {
						secrets[ts] = append(secrets[ts], line)
					}
					secretsMu.Unlock()
				}
			}
		}
		return nil
	}))
	secretsMu.Lock()
	known := slices.Clone(secrets[ts])
	secretsMu.Unlock()
	if len(known) == 0 {
		ts.Fatalf("nosecrets found no secret to look for under $WORK")
	}
	// Keep the check honest: the wrappers must have captured the daemons' logs.
	said := false
	for _, path := range logs {
		raw, err := os.ReadFile(path)
		ts.Check(err)
		text := string(raw)
		if strings.Contains(text, "msg=") {
			said = true
		}
		for _, s := range known {
			if i := strings.Index(text, s); i >= 0 {
				rel, _ := filepath.Rel(work, path)
				ts.Fatalf("a secret (%d chars, secret #%d of %d) appears in %s at byte %d", len(s), slices.Index(known, s)+1, len(known), rel, i)
			}
		}
	}
	if !said {
		ts.Fatalf("no daemon log line under $WORK/%s to scan: is the logging wrapper in place?", logDir)
	}
	ts.Logf("nosecrets: %d secrets absent from %d logs", len(known), len(logs))
}
