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

func (a *app) tokenCommand() *ucli.Command {
	return &ucli.Command{
		Name:        "token",
		Usage:       "refresh this host's NodeSecurityToken",
		UsageText:   a.name + " edge token COMMAND [flags]",
		Description: "Example:\n  " + a.name + " edge token refresh",
		Subcommands: []*ucli.Command{
			{
				Name:      "refresh",
				Usage:     "get a fresh node token now, keeping the key",
				UsageText: a.name + " edge token refresh [--state-dir DIR] [-o json]",
				Description: "Re-attests with the existing key and is issued a new token; the old token is\n" +
					"blacklisted and the new one replaces node.token atomically. Use it after a server-side\n" +
					"scope or security-context change, rather than waiting for the automatic refresh\n" +
					"(token_refresh_margin_secs before expiry). A running edged swaps the token into its\n" +
					"live stream; on a stopped host this command refreshes the file itself.\n\n" +
					"Example:\n  " + a.name + " edge token refresh\n  " + a.name + " edge token refresh -o json",
				Flags:  []ucli.Flag{stateDirFlag, outputFlag},
				Action: a.tokenRefresh,
			},
		},
	}
}

type refreshReport struct {
	NodeID       string  `json:"node_id"`
	TokenExpires *string `json:"token_expires"`
	DoneBy       string  `json:"done_by"`
}

func (a *app) tokenRefresh(c *ucli.Context) error {
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
	var exp time.Time
	by, err := a.onHost(c.Context, dir,
		func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			resp, err := localclient.New(dir.Path()).RefreshToken(ctx, connect.NewRequest(&edgev1.RefreshTokenRequest{}))
			if err != nil {
				return err
			}
			exp = asTime(resp.Msg.GetTokenExpires())
			return nil
		},
		func(ctx context.Context, h *rotation.Host) error {
			res, err := h.RefreshToken(ctx)
			exp = res.Expires
			return err
		})
	if err != nil {
		return err
	}
	rep := refreshReport{TokenExpires: timePtr(exp), DoneBy: by}
	if node, err := dir.ReadNode(); err == nil {
		rep.NodeID = node.NodeID
	}
	if out == "json" {
		return writeJSON(a.env.Stdout, rep)
	}
	fmt.Fprintf(a.env.Stdout, "refreshed the token of %s (by %s)\ntoken_expires: %s\n", rep.NodeID, by, derefDash(rep.TokenExpires))
	return nil
}
