// Package deps checks what the binaries shipped to hosts and laptops link.
package deps

import (
	"os/exec"
	"strings"
	"testing"
)

// The daemon and the CLI run on every host and on operators' laptops: they must not
// carry the control plane, its database drivers or its metrics stack. A package that
// pulls one in (a test helper imported from non-test code, a shared type moved to the
// wrong module) fails here, not in a customer's SBOM.
func TestShippedBinariesLinkNoServerCode(t *testing.T) {
	forbidden := []string{
		"github.com/aegis-edge/aegis/controlplane",
		"github.com/jackc/pgx",
		"modernc.org/sqlite",
		"modernc.org/libc",
		"github.com/mattn/go-sqlite3",
	}
	for _, target := range []struct{ goos, pkg string }{
		{"linux", "github.com/aegis-edge/aegis/edged/cmd/edged"},
		{"linux", "github.com/aegis-edge/aegis/aegisctl/cmd/aegisctl"},
		{"darwin", "github.com/aegis-edge/aegis/aegisctl/cmd/aegisctl"},
		{"windows", "github.com/aegis-edge/aegis/aegisctl/cmd/aegisctl"},
	} {
		cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", target.pkg)
		cmd.Env = append(cmd.Environ(), "GOOS="+target.goos, "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s (%s): %v\n%s", target.pkg, target.goos, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 50 {
			t.Fatalf("go list %s listed only %d packages: %q", target.pkg, len(deps), deps)
		}
		for _, dep := range deps {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s (%s) links %s", target.pkg, target.goos, dep)
				}
			}
		}
	}
}
