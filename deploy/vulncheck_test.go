package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// vulnProbe is a throwaway module for scripts/vulncheck.sh: its files, go.sum included so
// that only the module proxy is asked for the modules themselves.
type vulnProbe struct {
	name  string
	files map[string]string
	// wantFail: the script must exit non-zero and name these IDs as not excepted.
	wantFail []string
}

var vulnProbes = []vulnProbe{
	{
		name: "clean",
		files: map[string]string{
			"go.mod":  "module example.com/vulnprobe\n\ngo 1.21\n",
			"main.go": "package main\n\nimport \"strings\"\n\nfunc main() { println(strings.ToUpper(\"ok\")) }\n",
		},
	},
	{
		// golang.org/x/text before v0.3.7: language.Parse reads out of bounds (GO-2021-0113).
		name: "module vulnerability called",
		files: map[string]string{
			"go.mod": "module example.com/vulnprobe\n\ngo 1.21\n\nrequire golang.org/x/text v0.3.6\n",
			"go.sum": "golang.org/x/text v0.3.6 h1:aRYxNxv6iGQlyVaZmk6ZgYEDa+Jg18DxebPSrd6bg1M=\n" +
				"golang.org/x/text v0.3.6/go.mod h1:5Zoc/QRtKVWzQhOtBMvqHzDpF6irO9z98xDceosuGiQ=\n" +
				"golang.org/x/tools v0.0.0-20180917221912-90fa682c2a6e/go.mod h1:n7NCudcB/nEzxVGmLbDWY5pfWTLqBcC2KZ6jyYvM4mQ=\n",
			"main.go": "package main\n\nimport \"golang.org/x/text/language\"\n\nfunc main() { _, _ = language.Parse(\"en\") }\n",
		},
		wantFail: []string{"GO-2021-0113"},
	},
	{
		// GO-2026-6603 is excepted for the standard library's net/http; the same ID in
		// golang.org/x/net (fixed in v0.60.0) is a dependency to upgrade, so it still fails.
		name: "excepted ID found in a module",
		files: map[string]string{
			"go.mod": "module example.com/vulnprobe\n\ngo 1.26.0\n\nrequire golang.org/x/net v0.59.0\n\nrequire golang.org/x/text v0.42.0 // indirect\n",
			"go.sum": "golang.org/x/net v0.59.0 h1:5zfYln+w5XCxwrnMMJPufRgNoXEaGxl0wo5GqPXyues=\n" +
				"golang.org/x/net v0.59.0/go.mod h1:2DA/G1UfVbCpQPeWTmMPGY7Cs2PkBkwu743bVX5PIVg=\n" +
				"golang.org/x/text v0.42.0 h1:JbOZXgfeCPU9gacVtYliJqOhD+zhrEqK4LfdpmlUZqI=\n" +
				"golang.org/x/text v0.42.0/go.mod h1:ojzP1Z+2QtioaF8DTtO8K5q7JWVVYwZKenzujK0Zd0E=\n",
			"main.go": "package main\n\nimport (\n\t\"net/http\"\n\n\t\"golang.org/x/net/http2\"\n)\n\n" +
				"func main() { _ = http2.ConfigureServer(&http.Server{}, nil) }\n",
		},
		wantFail: []string{"GO-2026-6603"},
	},
}

// TestVulncheckScriptFails checks that the govulncheck step of scripts/test.sh can fail:
// scripts/vulncheck.sh, with the same pinned local database, on modules that call
// known-vulnerable code.
func TestVulncheckScriptFails(t *testing.T) {
	script := filepath.Join(repoRoot(t), "scripts", "vulncheck.sh")
	for _, p := range vulnProbes {
		t.Run(p.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range p.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command("bash", script, dir)
			// The probe is a module of its own, outside the workspace.
			cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			if len(p.wantFail) == 0 {
				if err != nil {
					t.Fatalf("vulncheck.sh on a module calling nothing vulnerable: %v\n%s", err, out.String())
				}
				return
			}
			if err == nil {
				t.Fatalf("vulncheck.sh passed a module that calls vulnerable code:\n%s", out.String())
			}
			var refused string
			for _, line := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(line, "FAIL ") && strings.Contains(line, "not excepted") {
					refused = line
				}
			}
			if refused == "" {
				t.Fatalf("vulncheck.sh failed, but not for a called vulnerability:\n%s", out.String())
			}
			for _, id := range p.wantFail {
				if !strings.Contains(refused, " "+id) {
					t.Errorf("refused %q, want %s among them\n%s", refused, id, out.String())
				}
			}
		})
	}
}
