package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) loginCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "login",
		Usage:     "check an API token against the control plane and save it as your profile",
		UsageText: a.name + " login --server URL --token-file F [--ca-file F]",
		Description: "Calls WhoAmI with the token; only if the control plane accepts it is the profile\n" +
			"(server, token, CA) saved to $AEGIS_CONFIG, else ~/.config/aegis/config.yaml (mode 0600).\n" +
			"Scripts may skip login by setting AEGIS_SERVER, AEGIS_TOKEN_FILE and AEGIS_CA_FILE.\n\n" +
			"Example:\n  " + a.name + " login --server https://127.0.0.1:7443 --token-file aegis-data/admin.token --ca-file aegis-data/ca.crt",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "server", Usage: "control plane URL, e.g. https://127.0.0.1:7443 (env AEGIS_SERVER)"},
			&ucli.StringFlag{Name: "token-file", Usage: "file holding the API token, or - for stdin (env AEGIS_TOKEN_FILE)"},
			&ucli.StringFlag{Name: "ca-file", Usage: "PEM CA certificate the server's certificate must chain to (default: system roots; env AEGIS_CA_FILE)"},
		},
		Action: a.login,
	}
}

func (a *app) login(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	server := firstNonEmpty(c.String("server"), a.env.Getenv("AEGIS_SERVER"))
	tokenFile := firstNonEmpty(c.String("token-file"), a.env.Getenv("AEGIS_TOKEN_FILE"))
	caFile := firstNonEmpty(c.String("ca-file"), a.env.Getenv("AEGIS_CA_FILE"))
	if server == "" {
		return usagef("missing --server: %s login --server URL --token-file F", a.name)
	}
	if tokenFile == "" {
		return usagef("missing --token-file: %s login --server URL --token-file F (the bootstrap token is admin.token in the control plane's data dir)", a.name)
	}
	server, err := normalizeServer(server)
	if err != nil {
		return err
	}
	token, err := a.readToken(tokenFile)
	if err != nil {
		return err
	}
	var caPEM []byte
	if caFile != "" {
		caPEM, err = os.ReadFile(caFile)
		if err != nil {
			return fmt.Errorf("cannot read the CA file: %w", err)
		}
	}
	hc, err := httpClient(caPEM)
	if err != nil {
		return fmt.Errorf("%s: %w: pass the control plane's ca.crt", caFile, err)
	}
	client := edgev1connect.NewEdgeAdminServiceClient(hc, server, connect.WithInterceptors(bearer(token)))
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.WhoAmI(ctx, connect.NewRequest(&edgev1.WhoAmIRequest{}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			return fmt.Errorf("the control plane at %s refused this API token: check --token-file; nothing was saved", server)
		}
		if isCertError(err) {
			if caFile == "" {
				return fmt.Errorf("the control plane at %s presented a certificate the system does not trust: pass its CA with --ca-file (ca.crt in its data dir)", server)
			}
			return fmt.Errorf("the control plane at %s presented a certificate not signed by the CA in %s: pass the right --ca-file", server, caFile)
		}
		return a.rpcError(err, server)
	}
	who := resp.Msg
	_, err = a.saveProfile(profile{Server: server, Token: token, CAPEM: string(caPEM)})
	if err != nil {
		return err
	}
	tenant := who.GetTenant()
	fmt.Fprintf(a.env.Stdout, "logged in to %s as %s of tenant %s (%s)\n", server, who.GetRole(), tenant.GetId(), tenant.GetKind())
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
