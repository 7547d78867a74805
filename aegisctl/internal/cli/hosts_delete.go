package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) hostsDeleteCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "delete",
		Usage:     "remove a revoked or logged-out host from the list (operator)",
		UsageText: a.name + " edge hosts delete NODE_ID [-o json]",
		Description: "Only a Revoked host can be deleted (after `" + a.name + " edge keys revoke-remote`, or\n" +
			"`" + a.name + " edge logout` on the host). A host that still holds a valid identity, Connected or\n" +
			"not, is refused and nothing changes: revoke it first. The deletion is audited; the\n" +
			"host's public key stays claimed, so that key can never enroll again.\n\n" +
			"Example:\n  " + a.name + " edge keys revoke-remote n-7a3b2f0c91d4\n  " + a.name + " edge hosts delete n-7a3b2f0c91d4",
		Flags:  []ucli.Flag{outputFlag},
		Action: a.deleteHost,
	}
}

func (a *app) deleteHost(c *ucli.Context) error {
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
	resp, err := client.DeleteHost(ctx, connect.NewRequest(&edgev1.DeleteHostRequest{NodeId: id}))
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
			return fmt.Errorf("no such host %q in your tenant: see `%s edge hosts list`", id, a.name)
		case connect.CodeFailedPrecondition:
			return fmt.Errorf("%s; nothing was deleted", orDefault(connectMessage(err), "the host is not revoked: revoke it first"))
		case connect.CodePermissionDenied:
			return errors.New("your API token may not delete hosts: an operator or admin token is needed")
		}
		return a.rpcError(err, p.Server)
	}
	j := toHostJSON(resp.Msg.GetHost())
	if out == "json" {
		return writeJSON(a.env.Stdout, struct {
			Deleted bool `json:"deleted"`
			hostJSON
		}{true, j})
	}
	fmt.Fprintf(a.env.Stdout, "deleted %s (%s) from the host list\n", j.NodeID, orDash(j.Name))
	return nil
}
