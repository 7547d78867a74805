package cli

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/cli-reference.md and docs/man/aegisctl.1")

// docs/cli-reference.md and the man page are rendered from the command tree: this fails
// when either is out of date, so a changed flag cannot ship with a stale reference.
func TestReferenceDocs(t *testing.T) {
	md, man, err := Reference()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"edge keys rotate", "--keep-old", "edge token refresh", "edge hosts delete", "--on-error", "completion"} {
		if !strings.Contains(md, want) {
			t.Errorf("the reference lacks %q", want)
		}
	}
	root := filepath.Join("..", "..", "..", "docs")
	for path, content := range map[string]string{
		filepath.Join(root, "cli-reference.md"):  md,
		filepath.Join(root, "man", "aegisctl.1"): man,
	} {
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("%s is out of date (or missing: %v): run `make docs` and commit it", path, err)
		}
	}
}
