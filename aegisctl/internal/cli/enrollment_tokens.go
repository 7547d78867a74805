package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	ucli "github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/durationpb"
)

func (a *app) enrollmentTokensCommand() *ucli.Command {
	return &ucli.Command{
		Name:        "enrollment-tokens",
		Usage:       "create, list and revoke single-use enrollment tokens",
		UsageText:   a.name + " edge enrollment-tokens create|list|revoke",
		Description: "Example:\n  T=$(" + a.name + " edge enrollment-tokens create --tags prod,web)\n  " + a.name + " edge enroll --token \"$T\"",
		Subcommands: []*ucli.Command{
			{
				Name:      "create",
				Usage:     "make a single-use enrollment token (printed alone on stdout)",
				UsageText: a.name + " edge enrollment-tokens create [--tags a,b] [--ttl 15m] [--name N] [-o json]",
				Description: "The token carries the control plane's CA fingerprint and URL, so a host needs\n" +
					"nothing else to enroll. It is shown once; the control plane keeps only its hash.\n" +
					"Tags follow the one rule `" + a.name + " edge hosts tag` uses: 1-63 letters, digits, '.', '_', ':',\n" +
					"'/' or '-', starting with a letter or digit (env:prod, team/web).\n\n" +
					"Example:\n  T=$(" + a.name + " edge enrollment-tokens create --tags prod --ttl 30m)",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "tags", Usage: "comma-separated tags given to the host that enrolls with it"},
					&ucli.DurationFlag{Name: "ttl", Value: 15 * time.Minute, Usage: "how long the token may be used (at most 24h)"},
					&ucli.StringFlag{Name: "name", Usage: "a label for the token in listings"},
					outputFlag,
				},
				Action: a.createEnrollmentToken,
			},
			{
				Name:        "list",
				Usage:       "list enrollment tokens",
				UsageText:   a.name + " edge enrollment-tokens list [-o json]",
				Description: "Example:\n  " + a.name + " edge enrollment-tokens list -o json",
				Flags:       []ucli.Flag{outputFlag},
				Action:      a.listEnrollmentTokens,
			},
			{
				Name:      "revoke",
				Usage:     "revoke an unused enrollment token",
				UsageText: a.name + " edge enrollment-tokens revoke ID",
				Description: "An unused token can no longer enroll a host. A used one is refused (exit 1, nothing\n" +
					"changes): the host it enrolled does not depend on it; revoke that host with\n" +
					"`" + a.name + " edge keys revoke-remote NODE_ID` instead. Revoking a revoked token is harmless.\n\n" +
					"Example:\n  " + a.name + " edge enrollment-tokens revoke 3f9c1a7b2d4e6f80",
				Action: a.revokeEnrollmentToken,
			},
		},
	}
}

func splitTags(s string) []string {
	var tags []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	return tags
}

// enrollmentTokenJSON is the -o json shape of one token (never the secret).
type enrollmentTokenJSON struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	TenantID  string   `json:"tenant"`
	Tags      []string `json:"tags"`
	State     string   `json:"state"`
	CreatedAt *string  `json:"created_at"`
	ExpiresAt *string  `json:"expires_at"`
	UsedAt    *string  `json:"used_at"`
	UsedBy    string   `json:"used_by"`
	RevokedAt *string  `json:"revoked_at"`
}

func toEnrollmentTokenJSON(t *edgev1.EnrollmentToken) enrollmentTokenJSON {
	tags := t.GetTags()
	if tags == nil {
		tags = []string{}
	}
	return enrollmentTokenJSON{
		ID:        t.GetId(),
		Name:      t.GetName(),
		TenantID:  t.GetTenantId(),
		Tags:      tags,
		State:     t.GetState(),
		CreatedAt: timePtr(asTime(t.GetCreatedAt())),
		ExpiresAt: timePtr(asTime(t.GetExpiresAt())),
		UsedAt:    timePtr(asTime(t.GetUsedAt())),
		UsedBy:    t.GetUsedBy(),
		RevokedAt: timePtr(asTime(t.GetRevokedAt())),
	}
}

func (a *app) createEnrollmentToken(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	ttl := c.Duration("ttl")
	if ttl <= 0 || ttl > 24*time.Hour {
		return usagef("--ttl must be between 1s and 24h (got %s)", ttl)
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.CreateEnrollmentToken(ctx, connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{
		Tags: splitTags(c.String("tags")),
		Ttl:  durationpb.New(ttl),
		Name: c.String("name"),
	}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	if out == "json" {
		// The command's job is to hand out the token, so -o json carries it too.
		return writeJSON(a.env.Stdout, struct {
			Token string `json:"token"`
			enrollmentTokenJSON
		}{resp.Msg.GetToken(), toEnrollmentTokenJSON(resp.Msg.GetEnrollmentToken())})
	}
	fmt.Fprintln(a.env.Stdout, resp.Msg.GetToken())
	return nil
}

func (a *app) listEnrollmentTokens(c *ucli.Context) error {
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
	resp, err := client.ListEnrollmentTokens(ctx, connect.NewRequest(&edgev1.ListEnrollmentTokensRequest{}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	toks := resp.Msg.GetEnrollmentTokens()
	return writeList(a.env.Stdout, out, "enrollment_tokens", toks, toEnrollmentTokenJSON, "ID\tNAME\tTAGS\tSTATE\tEXPIRES\tUSED_BY",
		func(t *edgev1.EnrollmentToken) []string {
			expires := "-"
			if e := asTime(t.GetExpiresAt()); !e.IsZero() {
				expires = formatTime(e)
			}
			return []string{t.GetId(), orDash(t.GetName()), orDash(strings.Join(t.GetTags(), ",")), orDash(t.GetState()), expires, orDash(t.GetUsedBy())}
		})
}

func (a *app) revokeEnrollmentToken(c *ucli.Context) error {
	id, err := oneArg(c, "ID")
	if err != nil {
		return err
	}
	// Only the public id belongs here; refuse a whole token rather than send its
	// secret somewhere it is not needed.
	if strings.Contains(id, ".") {
		return usagef("pass the token's ID (the part before the first dot, as `%s edge enrollment-tokens list` shows), not the whole token", a.name)
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	if _, err := client.RevokeEnrollmentToken(ctx, connect.NewRequest(&edgev1.RevokeEnrollmentTokenRequest{Id: id})); err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
			return fmt.Errorf("no such enrollment token %q: see `%s edge enrollment-tokens list`", id, a.name)
		case connect.CodeFailedPrecondition:
			// Used: the host that enrolled with it no longer needs it.
			return fmt.Errorf("%s; to cut that host off, run `%s edge keys revoke-remote NODE_ID`",
				orDefault(connectMessage(err), "enrollment token already used"), a.name)
		}
		return a.rpcError(err, p.Server)
	}
	fmt.Fprintf(a.env.Stdout, "revoked enrollment token %s\n", id)
	return nil
}
