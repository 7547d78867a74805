//go:build !unix

package aegisctl_test

import "github.com/rogpeppe/go-internal/testscript"

// owner: file owners are a Unix idea; the scripts that use it need [root] anyway.
func cmdOwner(ts *testscript.TestScript, neg bool, args []string) {
	ts.Skip("owner is Unix only")
}
