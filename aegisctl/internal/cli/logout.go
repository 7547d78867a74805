package cli

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/localclient"
	"github.com/aegis-edge/aegis/edged/rotation"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) logoutCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "logout",
		Usage:     "remove this host's identity (tells the control plane; works offline)",
		UsageText: a.name + " edge logout [--state-dir DIR] [-o json]",
		Description: "Tells the control plane the host is leaving (it then shows as Revoked and its tokens\n" +
			"are refused), then removes node.key, node.token, the archived keys and the rest of the\n" +
			"identity from the state dir. If the control plane cannot be reached the local state is\n" +
			"removed anyway. A running edged stops its stream and waits for a new enrollment.\n" +
			"Use it for routine decommissioning, and on a revoked host before enrolling again.\n\n" +
			"Example:\n  " + a.name + " edge logout\n  " + a.name + " edge logout && " + a.name + " edge enroll --token T",
		Flags:  []ucli.Flag{stateDirFlag, outputFlag},
		Action: a.logout,
	}
}

type logoutReport struct {
	NodeID         string `json:"node_id"`
	ServerNotified bool   `json:"server_notified"`
	StateDir       string `json:"state_dir"`
	DoneBy         string `json:"done_by"`
}

func (a *app) logout(c *ucli.Context) error {
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
	var rep logoutReport
	var why string
	by, err := a.onHost(c.Context, dir,
		func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			resp, err := localclient.New(dir.Path()).Logout(ctx, connect.NewRequest(&edgev1.EdgeLocalServiceLogoutRequest{}))
			if err != nil {
				return err
			}
			rep.NodeID, rep.ServerNotified = resp.Msg.GetNodeId(), resp.Msg.GetServerNotified()
			return nil
		},
		func(ctx context.Context, h *rotation.Host) error {
			res, err := h.Logout(ctx)
			rep.NodeID, rep.ServerNotified, why = res.NodeID, res.ServerNotified, res.Error
			return err
		})
	if err != nil {
		return err
	}
	rep.StateDir, rep.DoneBy = dir.Path(), by
	if out == "json" {
		return writeJSON(a.env.Stdout, rep)
	}
	w := a.env.Stdout
	if rep.ServerNotified {
		fmt.Fprintf(w, "logged out %s: the control plane was told; key, token and archive removed from %s\n", rep.NodeID, rep.StateDir)
	} else {
		if why == "" {
			why = "the control plane could not be reached"
		}
		fmt.Fprintf(w, "logged out %s: key, token and archive removed from %s; the control plane was NOT told (%s): ask an operator to run `%s edge keys revoke-remote %s`\n",
			rep.NodeID, rep.StateDir, oneLine(why), a.name, rep.NodeID)
	}
	fmt.Fprintf(w, "to enroll again: %s edge enroll --token T\n", a.name)
	return nil
}
