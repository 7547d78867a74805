//go:build windows

package keystore

import (
	"os"

	"github.com/aegis-edge/aegis/api/atomicfile"
)

// owner: files belong to their writer on Windows (aegisctl on a laptop; edged runs
// on Linux).
func (d *Dir) owner() *atomicfile.Owner { return nil }

func (d *Dir) adopt(*os.File) error { return nil }

func (d *Dir) adoptPath(string) error { return nil }
