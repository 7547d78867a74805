package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/keyage"
	ucli "github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/durationpb"
)

// keysPolicyCommand is `edge keys policy`: routine rotation on cadence, declared on
// the control plane and carried out by every selected daemon.
func (a *app) keysPolicyCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "policy",
		Usage:     "rotation policies: the maximum key age of the hosts a selector names (operator)",
		UsageText: a.name + " edge keys policy set|list|delete",
		Description: "A rotation policy is a target selector and a maximum key age. Every daemon it selects\n" +
			"rotates its own key before the key is that old (at a random moment in the last tenth of\n" +
			"the age, at most a day before it is due), with the same crash-safe rotation as\n" +
			"`" + a.name + " edge keys rotate`, without dropping its connection or stopping a running\n" +
			"`" + a.name + " edge exec`. A host's effective maximum is the smallest of the policies\n" +
			"that select it and of its own rotation.max_key_age (edged config). Connected daemons\n" +
			"learn a change at once. `" + a.name + " edge hosts list` shows each host's KEY_AGE,\n" +
			"KEY_DUE_AT and OVERDUE.\n\n" +
			"Example:\n  " + a.name + " edge keys policy set prod --target 'tags=AnyOf(prod)' --max-age 90d\n  " +
			a.name + " edge keys policy list -o json\n  " +
			a.name + " edge keys policy delete prod",
		Subcommands: []*ucli.Command{
			{
				Name:      "set",
				Usage:     "create or replace the rotation policy NAME (operator)",
				UsageText: a.name + " edge keys policy set NAME --target SEL --max-age AGE [-o json]",
				Description: "SEL is a target selector, as for fleet runs: all, tags=AnyOf(a,b), tags=AllOf(a,b),\n" +
					"tags=NoneOf(a), nodes=<id>,..., name=<glob>, os=linux, combined with ';'.\n" +
					"AGE is a duration with days: 90d, 180d, 12h, 1d12h. At least 10s; below 1h is accepted\n" +
					"with a warning (for tests and demos). Setting an existing NAME replaces it.\n" +
					"NAME is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.\n\n" +
					"Example:\n  " + a.name + " edge keys policy set prod --target 'tags=AnyOf(prod)' --max-age 90d",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "target", Usage: "which hosts the policy covers (a target selector)", Required: true},
					&ucli.StringFlag{Name: "max-age", Usage: "the oldest a selected host's key may grow (e.g. 90d)", Required: true},
					outputFlag,
				},
				Action: a.setKeyPolicy,
			},
			{
				Name:        "list",
				Usage:       "list the rotation policies of your tenant",
				UsageText:   a.name + " edge keys policy list [-o json]",
				Description: "Example:\n  " + a.name + " edge keys policy list -o json",
				Flags:       []ucli.Flag{outputFlag},
				Action:      a.listKeyPolicies,
			},
			{
				Name:        "delete",
				Usage:       "delete the rotation policy NAME (operator)",
				UsageText:   a.name + " edge keys policy delete NAME [-o json]",
				Description: "The hosts it selected keep rotating under their other policies and their own\nrotation.max_key_age, if any.\n\nExample:\n  " + a.name + " edge keys policy delete prod",
				Flags:       []ucli.Flag{outputFlag},
				Action:      a.deleteKeyPolicy,
			},
		},
	}
}

type policyJSON struct {
	Name          string  `json:"name"`
	Tenant        string  `json:"tenant"`
	Target        string  `json:"target"`
	MaxKeyAge     string  `json:"max_key_age"`
	MaxKeyAgeSecs int64   `json:"max_key_age_secs"`
	HostsSelected int32   `json:"hosts_selected"`
	UpdatedAt     *string `json:"updated_at"`
	UpdatedBy     string  `json:"updated_by"`
}

func toPolicyJSON(p *edgev1.RotationPolicy) policyJSON {
	d := p.GetMaxKeyAge().AsDuration()
	return policyJSON{
		Name: p.GetName(), Tenant: p.GetTenantId(), Target: p.GetTarget(),
		MaxKeyAge: keyage.Format(d), MaxKeyAgeSecs: int64(d / time.Second), HostsSelected: p.GetHostsSelected(),
		UpdatedAt: timePtr(asTime(p.GetUpdatedAt())), UpdatedBy: p.GetUpdatedBy(),
	}
}

func (a *app) setKeyPolicy(c *ucli.Context) error {
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	name, err := oneArg(c, "NAME")
	if err != nil {
		return err
	}
	age, warning, err := keyage.ParseMax(c.String("max-age"))
	if err != nil {
		return usagef("bad --max-age: %v", err)
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.SetRotationPolicy(ctx, connect.NewRequest(&edgev1.SetRotationPolicyRequest{Name: name, Target: c.String("target"), MaxKeyAge: durationpb.New(age)}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeInvalidArgument {
			msg := orDefault(connectMessage(err), "invalid rotation policy")
			if strings.HasPrefix(msg, "target ") || strings.HasPrefix(msg, "a target ") {
				// The same words as fleet runs and hosts list.
				return usagef("bad --target: %s", msg)
			}
			return usagef("%s", msg)
		}
		return a.rpcError(err, p.Server)
	}
	m := resp.Msg
	for _, w := range m.GetWarnings() {
		fmt.Fprintf(a.env.Stderr, "%s: warning: %s\n", a.name, w)
	}
	if len(m.GetWarnings()) == 0 && warning != "" {
		fmt.Fprintf(a.env.Stderr, "%s: warning: %s\n", a.name, warning)
	}
	j := toPolicyJSON(m.GetPolicy())
	if out == "json" {
		return writeJSON(a.env.Stdout, struct {
			Policy   policyJSON `json:"policy"`
			Replaced bool       `json:"replaced"`
		}{j, m.GetReplaced()})
	}
	verb := "created"
	if m.GetReplaced() {
		verb = "replaced"
	}
	fmt.Fprintf(a.env.Stdout, "%s rotation policy %s: hosts matching %s rotate their key before it is %s old (%s now)\n",
		verb, j.Name, j.Target, j.MaxKeyAge, plural(int(j.HostsSelected), "host", "hosts"))
	return nil
}

func (a *app) listKeyPolicies(c *ucli.Context) error {
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
	resp, err := client.ListRotationPolicies(ctx, connect.NewRequest(&edgev1.ListRotationPoliciesRequest{}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	return writeList(a.env.Stdout, out, "policies", resp.Msg.GetPolicies(), toPolicyJSON, "NAME\tTARGET\tMAX_KEY_AGE\tHOSTS\tUPDATED_AT\tTENANT",
		func(rp *edgev1.RotationPolicy) []string {
			j := toPolicyJSON(rp)
			return []string{j.Name, j.Target, j.MaxKeyAge, fmt.Sprint(j.HostsSelected), derefDash(j.UpdatedAt), orDash(j.Tenant)}
		})
}

func (a *app) deleteKeyPolicy(c *ucli.Context) error {
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	name, err := oneArg(c, "NAME")
	if err != nil {
		return err
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.DeleteRotationPolicy(ctx, connect.NewRequest(&edgev1.DeleteRotationPolicyRequest{Name: name}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return fmt.Errorf("no rotation policy %q in your tenant: see `%s edge keys policy list`", name, a.name)
		}
		return a.rpcError(err, p.Server)
	}
	j := toPolicyJSON(resp.Msg.GetPolicy())
	if out == "json" {
		return writeJSON(a.env.Stdout, struct {
			Deleted policyJSON `json:"deleted"`
		}{j})
	}
	fmt.Fprintf(a.env.Stdout, "deleted rotation policy %s (%s, max key age %s)\n", j.Name, j.Target, j.MaxKeyAge)
	return nil
}
