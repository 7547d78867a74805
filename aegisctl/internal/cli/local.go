package cli

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/localclient"
	"github.com/aegis-edge/aegis/edged/rotation"
)

// Who did a host-side change: the running daemon, or this process on a stopped host.
const (
	doneByDaemon = "edged"
	doneByCLI    = "aegisctl"
)

// enrolledDir is the state dir of an enrolled host, or the one-line error saying how
// to enroll.
func (a *app) enrolledDir(dir *keystore.Dir) error {
	ok, err := dir.Enrolled()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("this host is not enrolled (state dir %s): run `%s edge enroll --token T`", dir.Path(), a.name)
	}
	return nil
}

// onHost runs a host-side change where it belongs: through the local edged when one
// serves dir (so its in-memory key and the files never disagree), else here, on the
// state dir under its lock, with the same rotation package the daemon uses.
func (a *app) onHost(ctx context.Context, dir *keystore.Dir, viaDaemon func(context.Context) error, here func(context.Context, *rotation.Host) error) (string, error) {
	if err := a.enrolledDir(dir); err != nil {
		return "", err
	}
	running, err := dir.DaemonRunning()
	if err != nil {
		return "", err
	}
	if running {
		err := viaDaemon(ctx)
		if err == nil {
			return doneByDaemon, nil
		}
		if !localclient.IsNotRunning(err) {
			return doneByDaemon, daemonError(err)
		}
		if still, _ := dir.DaemonRunning(); still {
			return doneByDaemon, fmt.Errorf("edged holds %s but does not answer on %s yet (it is starting): try again in a moment", dir.Path(), dir.File(keystore.SocketFile))
		}
	}
	// No daemon: this process is the only one touching the keys, under the lock.
	if err := dir.CheckPermissions(); err != nil {
		return doneByCLI, err
	}
	client, closeFn, err := rotation.Dial(dir)
	if err != nil {
		return doneByCLI, err
	}
	defer closeFn()
	h := rotation.New(rotation.Config{Dir: dir, Client: client, Now: a.env.Now})
	return doneByCLI, here(ctx, h)
}

// daemonError is the daemon's own one-line message, without the RPC code prefix.
func daemonError(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return errors.New(ce.Message())
	}
	return err
}
