package localapi

import (
	"net"

	"golang.org/x/sys/unix"
)

// peerUID reads the connecting process's uid from the kernel (SO_PEERCRED): it is
// what the process was running as when it connected, and cannot be forged.
func peerUID(c net.Conn) (int, error) {
	var cred *unix.Ucred
	var cerr error
	if err := connFD(c, func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}
