package localapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
)

// errPeerUnknown: the platform cannot say who is at the other end of a connection.
var errPeerUnknown = errors.New("peer credentials unavailable")

// Who may talk to the daemon over its socket: the daemon's own user (the owner of
// the state directory) and root. On a packaged host edged runs as aegis-edge and
// operators use `sudo aegis edge ...`; root can read the state files anyway, so
// serving it adds no power. Nobody else is served, group members included: the socket
// sits in the 0700 state directory, so a read-only status for a group would need a
// socket elsewhere, and the host's commands are the owner's business.

// PeerReason says why a connection was refused.
type PeerReason string

const (
	// ReasonOtherUser: the peer runs as a uid that is neither the owner nor root.
	ReasonOtherUser PeerReason = "other_user"
	// ReasonUnidentified: the kernel could not say who the peer is.
	ReasonUnidentified PeerReason = "unidentified"
)

// PeerRefusedError is the local API's refusal of one connection.
type PeerRefusedError struct {
	Reason PeerReason
	UID    int // the peer's uid; -1 when unidentified
	Owner  int
	Err    error // why the peer is unidentified
}

func (e *PeerRefusedError) Error() string {
	if e.Reason == ReasonUnidentified {
		return fmt.Sprintf("local API: refused a connection whose peer could not be identified: %v", e.Err)
	}
	return fmt.Sprintf("local API: refused a connection from uid %d: only the daemon's user (uid %d) and root may use it", e.UID, e.Owner)
}

func (e *PeerRefusedError) Unwrap() error { return e.Err }

// admit decides on a peer whose uid lookup returned uid, err.
func admit(uid int, err error, owner int) error {
	switch {
	case err != nil:
		return &PeerRefusedError{Reason: ReasonUnidentified, UID: -1, Owner: owner, Err: err}
	case uid == owner || uid == 0:
		return nil
	default:
		return &PeerRefusedError{Reason: ReasonOtherUser, UID: uid, Owner: owner}
	}
}

// ownerOnly accepts connections only from the owner and root (see admit). The
// socket's mode 0600 already keeps other users out on the file system; this check
// holds even if the mode is loosened, the socket is passed on, or the directory is
// bind-mounted elsewhere.
type ownerOnly struct {
	net.Listener
	owner int
	log   *slog.Logger
}

// Accept returns the next admitted connection, closing any other on the spot.
func (l *ownerOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		refused := admit(uid, err, l.owner)
		if refused == nil {
			return c, nil
		}
		var pe *PeerRefusedError
		errors.As(refused, &pe)
		if pe.Reason == ReasonUnidentified {
			l.log.Warn("local API: refused a connection whose peer could not be identified", "reason", string(pe.Reason), "err", pe.Err)
		} else {
			l.log.Warn("local API: refused a connection from another user", "reason", string(pe.Reason), "peer_uid", pe.UID, "owner_uid", pe.Owner)
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
