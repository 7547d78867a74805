package localapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
)

// errPeerUnknown: the platform cannot say who is at the other end of a connection.
var errPeerUnknown = errors.New("peer credentials unavailable")

// ownerOnly accepts connections only from processes running as owner. The socket's
// mode 0600 already keeps other users out on the file system; this check holds even
// if the mode is loosened, the socket is passed on, or the directory is bind-mounted
// elsewhere. Root is not let in either: root can read the state files directly, and
// a daemon answering only its own user is the simpler promise (run aegisctl as the
// daemon's user, e.g. with sudo -u).
type ownerOnly struct {
	net.Listener
	owner int
	log   *slog.Logger
}

// Accept returns the next connection from the owner, closing any other on the spot.
func (l *ownerOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && uid == l.owner {
			return c, nil
		}
		if err != nil {
			l.log.Warn("local API: refused a connection whose peer could not be identified", "err", err)
		} else {
			l.log.Warn("local API: refused a connection from another user", "peer_uid", uid, "owner_uid", l.owner)
		}
		_ = c.Close()
	}
}

func connFD(c net.Conn, fn func(fd uintptr)) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%w: not a Unix socket connection", errPeerUnknown)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Control(fn)
}
