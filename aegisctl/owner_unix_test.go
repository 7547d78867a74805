//go:build unix

package aegisctl_test

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/rogpeppe/go-internal/testscript"
)

// owner UID PATH...: each PATH (and, for a directory, everything in it) belongs to UID.
func cmdOwner(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: owner UID PATH...")
	}
	want, err := strconv.ParseUint(args[0], 10, 32)
	ts.Check(err)
	for _, p := range args[1:] {
		ts.Check(filepath.Walk(ts.MkAbs(p), func(path string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if st := fi.Sys().(*syscall.Stat_t); uint64(st.Uid) != want {
				ts.Fatalf("%s belongs to uid %d, want %d", path, st.Uid, want)
			}
			return nil
		}))
	}
}
