package cli

import (
	"fmt"
	"strings"

	"github.com/aegis-edge/aegis/edged/enroll"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) enrollCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "enroll",
		Usage:     "give this host an identity with a single-use enrollment token",
		UsageText: a.name + " edge enroll --token T [--server URL] [--name N] [--state-dir DIR]",
		Description: "Generates the host's Ed25519 key in the state dir (0600 in a 0700 dir), trusts the\n" +
			"control plane only if its CA matches the fingerprint in the token, proves possession\n" +
			"of the key and stores node.key, node.token and node.json. On any failure nothing is\n" +
			"left behind. A running edged for the same state dir picks the identity up by itself.\n\n" +
			"Example:\n  " + a.name + " edge enroll --token \"$T\" --name web-east-1\n  " +
			a.name + " edge enroll --token \"$T\" --server https://cp.example:7443 --state-dir /var/lib/aegis/edge",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "token", Usage: "the enrollment token made by edge enrollment-tokens create (env AEGIS_ENROLLMENT_TOKEN)"},
			&ucli.StringFlag{Name: "server", Usage: "control plane URL (default: the one carried in the token)"},
			&ucli.StringFlag{Name: "name", Usage: "the host's display name (default: the hostname)"},
			stateDirFlag,
		},
		Action: a.enroll,
	}
}

func (a *app) enroll(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	token := firstNonEmpty(c.String("token"), a.env.Getenv("AEGIS_ENROLLMENT_TOKEN"))
	if strings.TrimSpace(token) == "" {
		return usagef("missing --token: get one with `%s edge enrollment-tokens create` and run `%s edge enroll --token T`", a.name, a.name)
	}
	server := c.String("server")
	if server != "" {
		var err error
		if server, err = normalizeServer(server); err != nil {
			return err
		}
	}
	dir, err := a.stateDir(c)
	if err != nil {
		return err
	}
	res, err := enroll.Enroll(c.Context, enroll.Options{
		Token:     token,
		ServerURL: server,
		Name:      c.String("name"),
		StateDir:  dir.Path(),
		Now:       a.env.Now,
	})
	if err != nil {
		// enroll's errors are one line, say what to do next and never hold the secret.
		return err
	}
	fmt.Fprintf(a.env.Stdout, "enrolled as %s in tenant %s (%s); start edged or it picks this up within a second if running\n",
		res.NodeID, res.Tenant.ID, res.Tenant.Kind)
	return nil
}
