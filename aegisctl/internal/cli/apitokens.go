package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) apiTokensCommand() *ucli.Command {
	return &ucli.Command{
		Name:        "api-tokens",
		Usage:       "create, list and revoke operators' API tokens (admins)",
		UsageText:   a.name + " api-tokens create|list|revoke",
		Description: "Example:\n  " + a.name + " api-tokens create --role operator --tenant t-1f2e3d4c --name alice > alice.token\n  AEGIS_CONFIG=alice.yaml " + a.name + " login --server URL --token-file alice.token --ca-file ca.crt",
		Subcommands: []*ucli.Command{
			{
				Name:      "create",
				Usage:     "make an API token (printed alone on stdout, once)",
				UsageText: a.name + " api-tokens create --role operator|viewer|admin [--tenant T] [--name N] [-o json]",
				Description: "viewer: read only. operator: also enroll, rotate, revoke, exec and run fleet\n" +
					"commands in its tenant. admin: everything, in every tenant, and manage tokens\n" +
					"and tenants. The token is shown once; the control plane keeps only its hash.\n\n" +
					"Example:\n  " + a.name + " api-tokens create --role viewer --name dashboard > viewer.token",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "role", Usage: "operator, viewer or admin (required)"},
					&ucli.StringFlag{Name: "tenant", Usage: "the tenant's id (default: your own)"},
					&ucli.StringFlag{Name: "name", Usage: "a label for the token in listings"},
					outputFlag,
				},
				Action: a.createAPIToken,
			},
			{
				Name:        "list",
				Usage:       "list API tokens (your tenant's; an admin's: every tenant's)",
				UsageText:   a.name + " api-tokens list [-o json]",
				Description: "Example:\n  " + a.name + " api-tokens list -o json",
				Flags:       []ucli.Flag{outputFlag},
				Action:      a.listAPITokens,
			},
			{
				Name:        "revoke",
				Usage:       "revoke an API token at once",
				UsageText:   a.name + " api-tokens revoke ID",
				Description: "Example:\n  " + a.name + " api-tokens revoke 3f9c1a7b2d4e6f80",
				Action:      a.revokeAPIToken,
			},
		},
	}
}

// apiTokenJSON is the -o json shape of one token (never the secret).
type apiTokenJSON struct {
	ID        string  `json:"id"`
	Name      string  `json:"name"`
	TenantID  string  `json:"tenant"`
	Role      string  `json:"role"`
	CreatedAt *string `json:"created_at"`
	RevokedAt *string `json:"revoked_at"`
}

func toAPITokenJSON(t *edgev1.APIToken) apiTokenJSON {
	return apiTokenJSON{
		ID:        t.GetId(),
		Name:      t.GetName(),
		TenantID:  t.GetTenantId(),
		Role:      t.GetRole(),
		CreatedAt: timePtr(asTime(t.GetCreatedAt())),
		RevokedAt: timePtr(asTime(t.GetRevokedAt())),
	}
}

func (a *app) createAPIToken(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	switch c.String("role") {
	case "operator", "viewer", "admin":
	case "":
		return usagef("--role is required: operator, viewer or admin")
	default:
		return usagef("--role must be operator, viewer or admin (got %q)", c.String("role"))
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.CreateAPIToken(ctx, connect.NewRequest(&edgev1.CreateAPITokenRequest{
		TenantId: c.String("tenant"),
		Role:     c.String("role"),
		Name:     c.String("name"),
	}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return fmt.Errorf("no such tenant %q: see `%s tenants list`", c.String("tenant"), a.name)
		}
		return a.rpcError(err, p.Server)
	}
	if out == "json" {
		return writeJSON(a.env.Stdout, struct {
			Token string `json:"token"`
			apiTokenJSON
		}{resp.Msg.GetToken(), toAPITokenJSON(resp.Msg.GetApiToken())})
	}
	fmt.Fprintln(a.env.Stdout, resp.Msg.GetToken())
	return nil
}

func (a *app) listAPITokens(c *ucli.Context) error {
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
	resp, err := client.ListAPITokens(ctx, connect.NewRequest(&edgev1.ListAPITokensRequest{}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	toks := resp.Msg.GetApiTokens()
	return writeList(a.env.Stdout, out, "api_tokens", toks, toAPITokenJSON, "ID\tNAME\tTENANT\tROLE\tCREATED\tREVOKED",
		func(t *edgev1.APIToken) []string {
			revoked := "-"
			if r := asTime(t.GetRevokedAt()); !r.IsZero() {
				revoked = formatTime(r)
			}
			return []string{t.GetId(), orDash(t.GetName()), t.GetTenantId(), t.GetRole(), formatTime(asTime(t.GetCreatedAt())), revoked}
		})
}

func (a *app) revokeAPIToken(c *ucli.Context) error {
	id, err := oneArg(c, "ID")
	if err != nil {
		return err
	}
	// Refuse a whole token rather than send its secret where it is not needed.
	if strings.Contains(id, ".") {
		return usagef("pass the token's ID (the part before the dot, as `%s api-tokens list` shows), not the whole token", a.name)
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	if _, err := client.RevokeAPIToken(ctx, connect.NewRequest(&edgev1.RevokeAPITokenRequest{Id: id})); err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return fmt.Errorf("no such API token %q: see `%s api-tokens list`", id, a.name)
		}
		return a.rpcError(err, p.Server)
	}
	fmt.Fprintf(a.env.Stdout, "revoked API token %s\n", id)
	return nil
}
