package cli

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) tenantsCommand() *ucli.Command {
	return &ucli.Command{
		Name:        "tenants",
		Usage:       "create and list tenants (admins)",
		UsageText:   a.name + " tenants create|list",
		Description: "Example:\n  T=$(" + a.name + " tenants create platform --kind team)\n  " + a.name + " api-tokens create --role operator --tenant \"$T\"",
		Subcommands: []*ucli.Command{
			{
				Name:      "create",
				Usage:     "make a tenant (its id printed alone on stdout)",
				UsageText: a.name + " tenants create NAME --kind personal|team [-o json]",
				Description: "A tenant owns hosts, enrollment tokens, API tokens and fleet runs; operators\n" +
					"of one tenant never see another's. Personal tenants get ids u-..., teams t-....\n\n" +
					"Example:\n  " + a.name + " tenants create alice --kind personal",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "kind", Usage: "personal or team (required)"},
					outputFlag,
				},
				Action: a.createTenant,
			},
			{
				Name:        "list",
				Usage:       "list tenants",
				UsageText:   a.name + " tenants list [-o json]",
				Description: "Example:\n  " + a.name + " tenants list -o json",
				Flags:       []ucli.Flag{outputFlag},
				Action:      a.listTenants,
			},
		},
	}
}

type tenantJSON struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Kind string `json:"kind"`
}

func toTenantJSON(t *edgev1.Tenant) tenantJSON {
	return tenantJSON{ID: t.GetId(), Name: t.GetName(), Kind: t.GetKind()}
}

func (a *app) createTenant(c *ucli.Context) error {
	name, err := oneArg(c, "NAME")
	if err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	switch c.String("kind") {
	case "personal", "team":
	case "":
		return usagef("--kind is required: personal or team")
	default:
		return usagef("--kind must be personal or team (got %q)", c.String("kind"))
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.CreateTenant(ctx, connect.NewRequest(&edgev1.CreateTenantRequest{Name: name, Kind: c.String("kind")}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	if out == "json" {
		return writeJSON(a.env.Stdout, toTenantJSON(resp.Msg.GetTenant()))
	}
	fmt.Fprintln(a.env.Stdout, resp.Msg.GetTenant().GetId())
	return nil
}

func (a *app) listTenants(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.ListTenants(ctx, connect.NewRequest(&edgev1.ListTenantsRequest{}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	ts := resp.Msg.GetTenants()
	return writeList(a.env.Stdout, out, "tenants", ts, toTenantJSON, "ID\tNAME\tKIND",
		func(t *edgev1.Tenant) []string { return []string{t.GetId(), t.GetName(), t.GetKind()} })
}
