package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/localclient"
	ucli "github.com/urfave/cli/v2"
)

// stateDirFlag is --state-dir, shared by the host-side commands.
var stateDirFlag = &ucli.StringFlag{
	Name:  "state-dir",
	Usage: "the host's edge state directory (default: $AEGIS_EDGE_STATE_DIR, else " + keystore.SystemStateDir + " where the package is installed, else ~/.aegis/edge)",
}

// stateDir resolves --state-dir the way edged does (keystore.ResolveDirWith): flag,
// else $AEGIS_EDGE_STATE_DIR, else the package's /var/lib/aegis-edge when it exists,
// else ~/.aegis/edge; always absolute. A directory this user cannot enter (the
// package's, which belongs to the daemon's user) is refused here with the fix, before
// any command reads half of it.
func (a *app) stateDir(c *ucli.Context) (*keystore.Dir, error) {
	abs, err := keystore.ResolveDirWith(c.String("state-dir"), keystore.Lookup{Getenv: a.env.Getenv, HomeDir: a.env.HomeDir, SystemDir: a.env.SystemStateDir})
	if err != nil {
		return nil, err
	}
	if f, err := os.Open(abs); errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("the state dir %s is not open to you (it belongs to the daemon's user, 0700): run it with sudo: `sudo %s`", abs, c.Command.HelpName)
	} else if err == nil {
		f.Close()
	}
	return keystore.Open(abs), nil
}

func (a *app) statusCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "status",
		Usage:     "show this host's identity and connection",
		UsageText: a.name + " edge status [--state-dir DIR] [-o json]",
		Description: "Asks the local edged over its socket; when edged is not running, reads the state\n" +
			"directory itself and says so (still exit 0). Exit 1 when the host is not enrolled.\n\n" +
			"Example:\n  " + a.name + " edge status\n  " + a.name + " edge status --state-dir /var/lib/aegis/edge -o json",
		Flags:  []ucli.Flag{stateDirFlag, outputFlag},
		Action: a.status,
	}
}

// hostStatusReport is `edge status`: the guide's fields first.
type hostStatusReport struct {
	NodeID         string  `json:"node_id"`
	Tenant         string  `json:"tenant"`
	TenantKind     string  `json:"tenant_kind"`
	Status         string  `json:"status"`
	KeyFingerprint string  `json:"key_fingerprint"`
	TokenExpires   *string `json:"token_expires"`
	DaemonRunning  bool    `json:"daemon_running"`
	ServerURL      string  `json:"server_url"`
	LastError      string  `json:"last_error"`
	StateDir       string  `json:"state_dir"`
	// Routine rotation, from the running daemon (null/"" when it is stopped or no
	// max key age applies): the effective max age, when the key falls due, when the
	// daemon will rotate it, and why the last attempt failed.
	MaxKeyAge      string  `json:"max_key_age"`
	KeyDueAt       *string `json:"key_due_at"`
	NextRotationAt *string `json:"next_rotation_at"`
	RotationError  string  `json:"rotation_error"`
}

func (a *app) status(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	dir, err := a.stateDir(c)
	if err != nil {
		return err
	}
	enrolled, err := dir.Enrolled()
	if err != nil {
		return err
	}
	if !enrolled {
		return fmt.Errorf("this host is not enrolled (state dir %s): run `%s edge enroll --token T`", dir.Path(), a.name)
	}
	running, err := dir.DaemonRunning()
	if err != nil {
		return err
	}
	var rep hostStatusReport
	if running {
		rep, err = a.statusFromDaemon(c.Context, dir)
		if err != nil && localclient.IsNotRunning(err) {
			// The daemon took its lock but has not opened its socket yet.
			rep, err = a.statusFromFiles(dir)
			if err != nil {
				return err
			}
			rep.DaemonRunning = true
			rep.Status = "Connecting"
			rep.LastError = "the daemon is starting"
		} else if err != nil {
			// The daemon holds its lock but does not answer (starting, or stuck):
			// report what the files say and why the daemon could not be asked.
			rep, err = a.statusFromFiles(dir)
			if err != nil {
				return err
			}
			rep.DaemonRunning = true
			rep.Status = "Unknown"
			rep.LastError = "the daemon did not answer on " + dir.File(keystore.SocketFile)
		}
	} else {
		rep, err = a.statusFromFiles(dir)
		if err != nil {
			return err
		}
	}
	rep.StateDir = dir.Path()
	if out == "json" {
		return writeJSON(a.env.Stdout, rep)
	}
	w := a.env.Stdout
	fmt.Fprintf(w, "node_id: %s\n", rep.NodeID)
	fmt.Fprintf(w, "tenant: %s (%s)\n", rep.Tenant, rep.TenantKind)
	fmt.Fprintf(w, "status: %s\n", rep.Status)
	fmt.Fprintf(w, "key_fingerprint: %s\n", rep.KeyFingerprint)
	fmt.Fprintf(w, "token_expires: %s\n", derefDash(rep.TokenExpires))
	if rep.MaxKeyAge != "" {
		fmt.Fprintf(w, "max_key_age: %s\n", rep.MaxKeyAge)
		fmt.Fprintf(w, "key_due_at: %s\n", derefDash(rep.KeyDueAt))
		fmt.Fprintf(w, "next_rotation_at: %s (routine rotation, done by edged)\n", derefDash(rep.NextRotationAt))
	}
	if rep.RotationError != "" {
		fmt.Fprintf(w, "rotation_error: %s (the current key stays in use; edged retries)\n", oneLine(rep.RotationError))
	}
	if !rep.DaemonRunning && rep.Status == "Revoked" {
		fmt.Fprintf(w, "last_error: %s\n", oneLine(rep.LastError))
	} else if !rep.DaemonRunning {
		if rep.LastError != "" {
			fmt.Fprintf(w, "last_error: %s\n", oneLine(rep.LastError))
		}
		if dir.Path() == keystore.SystemStateDir {
			// The package's directory: the daemon is the systemd unit's.
			fmt.Fprintln(w, "daemon: not running (start it with: sudo systemctl start aegis-edged)")
		} else {
			fmt.Fprintf(w, "daemon: not running (start it with: edged run --state-dir %s)\n", dir.Path())
		}
	} else if rep.Status != "Connected" && rep.LastError != "" {
		fmt.Fprintf(w, "last_error: %s\n", oneLine(rep.LastError))
	}
	return nil
}

func (a *app) statusFromDaemon(ctx context.Context, dir *keystore.Dir) (hostStatusReport, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	client := localclient.New(dir.Path())
	resp, err := client.Status(ctx, connect.NewRequest(&edgev1.StatusRequest{}))
	if err != nil {
		return hostStatusReport{}, err
	}
	s := resp.Msg
	maxAge := ""
	if d := s.GetMaxKeyAge().AsDuration(); d > 0 {
		maxAge = keyage.Format(d)
	}
	return hostStatusReport{
		MaxKeyAge:      maxAge,
		KeyDueAt:       timePtr(asTime(s.GetKeyDueAt())),
		NextRotationAt: timePtr(asTime(s.GetNextRotationAt())),
		RotationError:  s.GetRotationError(),
		NodeID:         s.GetNodeId(),
		Tenant:         s.GetTenant().GetId(),
		TenantKind:     s.GetTenant().GetKind(),
		Status:         s.GetStatus(),
		KeyFingerprint: s.GetKeyFingerprint(),
		TokenExpires:   timePtr(asTime(s.GetTokenExpires())),
		DaemonRunning:  true,
		ServerURL:      s.GetServerUrl(),
		LastError:      s.GetLastError(),
	}, nil
}

// statusFromFiles is the stopped host's view: the identity on disk, Disconnected (or
// Revoked when the daemon recorded a revocation).
func (a *app) statusFromFiles(dir *keystore.Dir) (hostStatusReport, error) {
	node, err := dir.ReadNode()
	if err != nil {
		if errors.Is(err, keystore.ErrNotEnrolled) {
			return hostStatusReport{}, fmt.Errorf("this host is not enrolled (state dir %s): run `%s edge enroll --token T`", dir.Path(), a.name)
		}
		return hostStatusReport{}, err
	}
	rep := hostStatusReport{
		NodeID:     node.NodeID,
		Tenant:     node.Tenant.ID,
		TenantKind: node.Tenant.Kind,
		Status:     "Disconnected",
		ServerURL:  node.ServerURL,
	}
	key, err := dir.ReadKey()
	if err != nil {
		return rep, fmt.Errorf("the state dir %s has no usable key: %w", dir.Path(), err)
	}
	rep.KeyFingerprint = fingerprint.Of(key.Public().(ed25519.PublicKey))
	if tok, err := dir.ReadToken(); err == nil {
		// Display only: the token's expiry as the host sees it, never a trust decision.
		if claims, err := nodetoken.Peek(tok); err == nil {
			rep.TokenExpires = timePtr(claims.Expires())
		}
	}
	if tok, err := dir.ReadToken(); err == nil {
		// edged refuses to connect with a node.key its token is not bound to; say why
		// here too, where the owner looks first.
		var mm *keystore.KeyMismatchError
		if errors.As(dir.CheckKeyBinding(key, tok), &mm) {
			rep.LastError = mm.Error()
		}
	}
	if r, ok, err := dir.ReadRevoked(); err == nil && ok {
		rep.Status = "Revoked"
		rep.LastError = "revoked (" + r.Reason + "): get a new enrollment token, run `" + a.name + " edge logout`, then `" + a.name + " edge enroll --token T`"
	}
	return rep, nil
}
