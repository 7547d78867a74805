//go:build !unix

package aegisctl_test

import "github.com/rogpeppe/go-internal/testscript"

// owner: file owners are a Unix idea. The scripts that use it need root and setpriv
// and skip before they reach it elsewhere; a script that does reach it fails.
func cmdOwner(ts *testscript.TestScript, neg bool, args []string) {
	ts.Fatalf("owner is Unix only")
}
