package buildinfo

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolveLdflagsWin(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "v0.0.1"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "feedface"}}}
	got := resolve("v1.2.3", "abc123", bi)
	if got.Version != "v1.2.3" || got.Commit != "abc123" || got.GoVersion != "go1.99.1" {
		t.Fatalf("got %+v", got)
	}
}

func TestResolveFallsBackToBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "v0.4.0"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "feedface"}, {Key: "vcs.modified", Value: "true"}}}
	got := resolve("", "", bi)
	if got.Version != "v0.4.0" || got.Commit != "feedface-dirty" {
		t.Fatalf("got %+v", got)
	}
}

func TestResolveNothingKnown(t *testing.T) {
	got := resolve("", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}})
	if got.Version != "dev" || got.Commit != "unknown" || got.GoVersion != runtime.Version() {
		t.Fatalf("got %+v", got)
	}
	if line := got.Line("edged"); !strings.HasPrefix(line, "edged dev (commit unknown, go") {
		t.Fatalf("line %q", line)
	}
}

// TestLdflagsStampABinary builds a real program with -X and runs it, so the variable
// names documented for release builds cannot drift from the code.
func TestLdflagsStampABinary(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "main.go")
	os.WriteFile(main, []byte("package main\n\nimport (\"fmt\"; \"github.com/aegis-edge/aegis/api/buildinfo\")\n\nfunc main() { fmt.Print(buildinfo.Get().Line(\"x\")) }\n"), 0o600)
	bin := filepath.Join(dir, "x")
	pkg := "github.com/aegis-edge/aegis/api/buildinfo"
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X "+pkg+".version=v9.8.7 -X "+pkg+".commit=c0ffee", main)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "x v9.8.7 (commit c0ffee, " + runtime.Version(); !strings.HasPrefix(string(out), want) {
		t.Fatalf("got %q, want prefix %q", out, want)
	}
}
