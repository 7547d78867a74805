package cli

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	ucli "github.com/urfave/cli/v2"
)

// keysRevokeRemoteCommand is `edge keys revoke-remote`: the operator-side hammer, run
// from any workstation with a saved profile, for a host nobody can get to.
func (a *app) keysRevokeRemoteCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "revoke-remote",
		Usage:     "revoke a host's identity from the control plane (operator)",
		UsageText: a.name + " edge keys revoke-remote NODE_ID [-o json]",
		Description: "Three things happen on the control plane, at once:\n" +
			"  - the host's status becomes Revoked;\n" +
			"  - its active NodeSecurityToken is blacklisted;\n" +
			"  - its live stream is dropped.\n" +
			"What the host's edged then does: it is told Disconnect{REVOKED} (or, if it was offline,\n" +
			"is refused as revoked at its next connection), writes a revoked marker in its state\n" +
			"dir, logs once that its identity was revoked and never reconnects with it. The process\n" +
			"keeps running, idle, and `" + a.name + " edge status` on the host says Revoked and what to do.\n" +
			"Its key files stay on disk until the owner runs `" + a.name + " edge logout`; then, with a new\n" +
			"enrollment token, `" + a.name + " edge enroll`, and the waiting edged picks the new identity up. Use it when you cannot get to the host (a lost laptop, a compromised\n" +
			"network); to decommission a host you can reach, prefer `" + a.name + " edge logout` on it.\n\n" +
			"Example:\n  " + a.name + " edge keys revoke-remote n-7a3b2f0c91d4",
		Flags:  []ucli.Flag{outputFlag},
		Action: a.keysRevokeRemote,
	}
}

type revokeReport struct {
	NodeID            string `json:"node_id"`
	Name              string `json:"name"`
	Status            string `json:"status"`
	BlacklistedTokens int32  `json:"blacklisted_tokens"`
	StreamDropped     bool   `json:"stream_dropped"`
}

func (a *app) keysRevokeRemote(c *ucli.Context) error {
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	id, err := oneArg(c, "NODE_ID")
	if err != nil {
		return err
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: id}))
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
			return fmt.Errorf("no such host %q in your tenant: see `%s edge hosts list`", id, a.name)
		case connect.CodePermissionDenied:
			return fmt.Errorf("your API token may not revoke hosts: an operator or admin token is needed")
		}
		return a.rpcError(err, p.Server)
	}
	h := toHostJSON(resp.Msg.GetHost())
	rep := revokeReport{
		NodeID: h.NodeID, Name: h.Name, Status: h.Status,
		BlacklistedTokens: resp.Msg.GetBlacklistedTokens(), StreamDropped: resp.Msg.GetStreamDropped(),
	}
	if out == "json" {
		return writeJSON(a.env.Stdout, rep)
	}
	w := a.env.Stdout
	fmt.Fprintf(w, "revoked %s (%s)\n", rep.NodeID, orDash(rep.Name))
	fmt.Fprintf(w, "status: %s\n", rep.Status)
	fmt.Fprintf(w, "tokens blacklisted: %d\n", rep.BlacklistedTokens)
	if rep.StreamDropped {
		fmt.Fprintln(w, "live stream: dropped")
	} else {
		fmt.Fprintln(w, "live stream: none was open")
	}
	fmt.Fprintf(w, "to bring the host back: on it, `%s edge logout` then `%s edge enroll --token <new token>`\n", a.name, a.name)
	return nil
}
