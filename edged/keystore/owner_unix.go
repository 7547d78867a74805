//go:build unix

package keystore

import (
	"os"
	"syscall"

	"github.com/aegis-edge/aegis/api/atomicfile"
)

// owner is who a file created in d must belong to: the directory's owner when this
// process is root and the directory belongs to another user, nil otherwise (a file
// belongs to its writer). On a packaged host edged runs as aegis-edge and owns
// /var/lib/aegis-edge; `sudo aegis edge enroll` (or rotate, refresh, with the daemon
// stopped) writes there as root, and what it writes must stay readable by the daemon.
// A directory that cannot be read yet (absent) asks for nothing.
func (d *Dir) owner() *atomicfile.Owner {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(d.path)
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	return &atomicfile.Owner{UID: int(st.Uid), GID: int(st.Gid)}
}

// adopt gives f, just created in d, to d's owner (see owner).
func (d *Dir) adopt(f *os.File) error {
	o := d.owner()
	if o == nil {
		return nil
	}
	return f.Chown(o.UID, o.GID)
}

// adoptPath is adopt for a directory made by path.
func (d *Dir) adoptPath(path string) error {
	o := d.owner()
	if o == nil {
		return nil
	}
	return os.Lchown(path, o.UID, o.GID)
}
