// End-to-end tests of the CLI: testdata/script/*.txtar run the REAL binaries
// (controlplane, edged, aegisctl and its `aegis` name), built once in TestMain.
package aegisctl_test

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	// Unix socket paths are limited to ~108 bytes, and every state dir holds
	// edged.sock: keep the temp roots short.
	dir, err := os.MkdirTemp(shortTemp(), "aegisbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// packaged_host.txtar runs edged as another user: it must reach the binaries.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The daemons are built aside and reached through logging wrappers (see
	// writeLogWrapper); aegisctl, which prints tokens to its user by design, is not.
	real := filepath.Join(dir, "real")
	builds := []struct{ moduleDir, pkg, out string }{
		{"../controlplane", "./cmd/controlplane", real},
		{"../edged", "./cmd/edged", real},
		{".", "./cmd/aegisctl", dir},
	}
	for _, b := range builds {
		cmd := exec.Command("go", "build", "-o", b.out+string(filepath.Separator), b.pkg)
		cmd.Dir = b.moduleDir
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s in %s: %v\n%s", b.pkg, b.moduleDir, err, out)
			return 1
		}
	}
	if err := os.Symlink("aegisctl", filepath.Join(dir, "aegis")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, name := range []string{"controlplane", "edged"} {
		if err := writeLogWrapper(filepath.Join(dir, name), filepath.Join(real, name)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	binDir = dir
	return m.Run()
}

func shortTemp() string {
	if fi, err := os.Stat("/tmp"); err == nil && fi.IsDir() {
		return "/tmp"
	}
	return os.TempDir()
}

func TestScripts(t *testing.T) {
	root, err := os.MkdirTemp(shortTemp(), "aegists")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	// Entered (not listed) by the daemon's user in packaged_host.txtar.
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir:         "testdata/script",
		WorkdirRoot: root,
		Condition: func(cond string) (bool, error) {
			if cond == "root" {
				return os.Geteuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", binDir+string(os.PathListSeparator)+env.Getenv("PATH"))
			env.Setenv("HOME", filepath.Join(env.WorkDir, "home"))
			if err := os.MkdirAll(filepath.Join(env.WorkDir, "home"), 0o700); err != nil {
				return err
			}
			for _, name := range []string{"CP_PORT", "CP2_PORT"} {
				port, err := freePort()
				if err != nil {
					return err
				}
				env.Setenv(name, strconv.Itoa(port))
			}
			env.Setenv("CP_URL", "https://127.0.0.1:"+env.Getenv("CP_PORT"))
			env.Setenv("CP2_URL", "https://127.0.0.1:"+env.Getenv("CP2_PORT"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitfile":   cmdWaitFile,
			"waitlisten": cmdWaitListen,
			"waitfor":    cmdWaitFor,
			"stdoutenv":  cmdStdoutEnv,
			"perm":       cmdPerm,
			"owner":      cmdOwner,
			"emptydir":   cmdEmptyDir,
			"sleep":      cmdSleep,
			"archived":   cmdArchived,
			"nosecrets":  cmdNoSecrets,
		},
	})
}

// freePort asks the kernel for a free loopback port. A tiny race remains between
// closing it here and the control plane binding it; with ports picked from the
// ephemeral range it does not bite in practice.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// timeoutArg strips an optional leading "-timeout D" (default 30s).
func timeoutArg(ts *testscript.TestScript, args []string) (time.Duration, []string) {
	if len(args) >= 2 && args[0] == "-timeout" {
		d, err := time.ParseDuration(args[1])
		ts.Check(err)
		return d, args[2:]
	}
	return 30 * time.Second, args
}

// waitfile [-timeout D] FILE: wait until FILE exists.
func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	timeout, args := timeoutArg(ts, args)
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitfile [-timeout D] FILE")
	}
	path := ts.MkAbs(args[0])
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%s did not appear within %s", args[0], timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitlisten [-timeout D] HOST:PORT: wait until something accepts TCP connections.
func cmdWaitListen(ts *testscript.TestScript, neg bool, args []string) {
	timeout, args := timeoutArg(ts, args)
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitlisten [-timeout D] HOST:PORT")
	}
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", args[0], time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("nothing listens on %s after %s: %v", args[0], timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitfor [-timeout D] REGEXP CMD [ARGS...]: run CMD (from PATH) until its stdout
// matches REGEXP; its last stdout and stderr become the script's.
func cmdWaitFor(ts *testscript.TestScript, neg bool, args []string) {
	timeout, args := timeoutArg(ts, args)
	if neg || len(args) < 2 {
		ts.Fatalf("usage: waitfor [-timeout D] REGEXP CMD [ARGS...]")
	}
	re, err := regexp.Compile("(?m)" + args[0])
	ts.Check(err)
	deadline := time.Now().Add(timeout)
	for {
		_ = ts.Exec(args[1], args[2:]...)
		if re.MatchString(ts.ReadFile("stdout")) {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("stdout of %s never matched %q within %s", strings.Join(args[1:], " "), args[0], timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stdoutenv VAR [REGEXP]: set VAR to the last command's stdout, trimmed, or to the
// first submatch of REGEXP in it.
func cmdStdoutEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: stdoutenv VAR [REGEXP]")
	}
	out := ts.ReadFile("stdout")
	if len(args) == 1 {
		ts.Setenv(args[0], strings.TrimSpace(out))
		rememberSecrets(ts, out)
		return
	}
	re, err := regexp.Compile("(?m)" + args[1])
	ts.Check(err)
	m := re.FindStringSubmatch(out)
	if len(m) < 2 {
		ts.Fatalf("stdout does not match %q (with a group)", args[1])
	}
	ts.Setenv(args[0], m[1])
	rememberSecrets(ts, m[1])
}

// perm MODE PATH: PATH's permission bits are exactly MODE (octal).
func cmdPerm(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: perm MODE PATH")
	}
	want, err := strconv.ParseUint(args[0], 8, 32)
	ts.Check(err)
	fi, err := os.Stat(ts.MkAbs(args[1]))
	ts.Check(err)
	got := uint64(fi.Mode().Perm())
	if (got == want) == neg {
		ts.Fatalf("%s has mode %#o, want %s%#o", args[1], got, map[bool]string{true: "not ", false: ""}[neg], want)
	}
}

// emptydir DIR: DIR is absent or holds no identity file (lock files may remain).
func cmdEmptyDir(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: emptydir DIR")
	}
	entries, err := os.ReadDir(ts.MkAbs(args[0]))
	if os.IsNotExist(err) {
		return
	}
	ts.Check(err)
	var left []string
	for _, e := range entries {
		switch e.Name() {
		case ".lock", "edged.pid":
			continue
		}
		left = append(left, e.Name())
	}
	if len(left) > 0 {
		ts.Fatalf("%s is not empty: %s", args[0], strings.Join(left, " "))
	}
}

// cmdSleep waits for a duration ("sleep 2s"): for scripts that must outlive a TTL.
func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: sleep DURATION")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	time.Sleep(d)
}

// archiveName is the guide's archive file name: RFC 3339 UTC to the second.
var archiveName = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\.key$`)

// archived DIR N: DIR (mode 0700) holds exactly N archived keys, each named
// <RFC 3339 UTC>.key and mode 0600, and nothing else.
func cmdArchived(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: archived DIR N")
	}
	want, err := strconv.Atoi(args[1])
	ts.Check(err)
	dir := ts.MkAbs(args[0])
	fi, err := os.Stat(dir)
	ts.Check(err)
	if fi.Mode().Perm() != 0o700 {
		ts.Fatalf("%s has mode %#o, want 0700", args[0], fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	ts.Check(err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if !archiveName.MatchString(e.Name()) {
			ts.Fatalf("%s: %q is not named <RFC 3339 UTC>.key", args[0], e.Name())
		}
		info, err := e.Info()
		ts.Check(err)
		if info.Mode().Perm() != 0o600 {
			ts.Fatalf("%s/%s has mode %#o, want 0600", args[0], e.Name(), info.Mode().Perm())
		}
	}
	if len(entries) != want {
		ts.Fatalf("%s holds %d keys (%s), want %d", args[0], len(entries), strings.Join(names, " "), want)
	}
}
