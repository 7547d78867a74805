package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/keyage"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) hostsCommand() *ucli.Command {
	return &ucli.Command{
		Name:        "hosts",
		Usage:       "list and inspect enrolled hosts (control plane view)",
		UsageText:   a.name + " edge hosts list|get|set|tag|delete",
		Description: "Example:\n  " + a.name + " edge hosts list --target 'tags=AnyOf(prod)'",
		Subcommands: []*ucli.Command{
			{
				Name:      "list",
				Usage:     "list the hosts of your tenant",
				UsageText: a.name + " edge hosts list [--target SEL] [-o json]",
				Description: "SEL is all, tags=AnyOf(a,b), tags=AllOf(a,b), tags=NoneOf(a), nodes=<id>,...,\n" +
					"name=<glob>, os=linux, key_age>90d, combined with ';'.\n" +
					"KEY_AGE is how old each host's key is; KEY_DUE_AT when it reaches the smallest max age of\n" +
					"the rotation policies selecting it (`" + a.name + " edge keys policy list`); OVERDUE marks\n" +
					"a key older than that.\n\n" +
					"Example:\n  " + a.name + " edge hosts list -o json\n  " + a.name + " edge hosts list --target 'key_age>90d'",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "target", Value: "all", Usage: "which hosts to list (a target selector)"},
					outputFlag,
				},
				Action: a.listHosts,
			},
			{
				Name:        "get",
				Usage:       "show one host",
				UsageText:   a.name + " edge hosts get [-o json] NODE_ID",
				Description: "Example:\n  " + a.name + " edge hosts get -o json n-7a3b2f0c91de",
				Flags:       []ucli.Flag{outputFlag},
				Action:      a.getHost,
			},
			{
				Name:      "set",
				Usage:     "change which security context a host evaluates tool calls against (operator)",
				UsageText: a.name + " edge hosts set --security-context NAME [--no-refresh] [-o json] NODE_ID",
				Description: "The control plane records NAME for the host; the host's next NodeSecurityToken carries it,\n" +
					"and the host allows exactly what its local policy (security_contexts.NAME in its edged\n" +
					"config) allows. By default the host's live daemon is told to refresh its token now, so\n" +
					"the very next `" + a.name + " edge exec` is evaluated in the new context. With --no-refresh\n" +
					"it takes effect at the host's next token refresh (or `" + a.name + " edge token refresh` on it).\n" +
					"NAME is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.\n\n" +
					"Example:\n  " + a.name + " edge hosts set --security-context readonly n-7a3b2f0c91de",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "security-context", Usage: "the context NAME (defined in the host's edged config)", Required: true},
					&ucli.BoolFlag{Name: "no-refresh", Usage: "do not ask the host to refresh its token now"},
					outputFlag,
				},
				Action: a.setHost,
			},
			{
				Name:      "tag",
				Usage:     "add and remove a host's tags, what --target selectors select on (operator)",
				UsageText: a.name + " edge hosts tag NODE_ID [--add a,b] [--remove c] [-o json]",
				Description: "A host starts with the tags of the enrollment token it enrolled with; this changes them.\n" +
					"Fleet runs and `" + a.name + " edge hosts list --target 'tags=AnyOf(a,b)'` select on them.\n" +
					"A tag is 1-63 letters, digits, '.', '_', ':', '/' or '-', starting with a letter or digit;\n" +
					"a host has at most 64. Adding a tag it has, or removing one it lacks, changes nothing.\n" +
					"The flags may come before or after NODE_ID.\n\n" +
					"Example:\n  " + a.name + " edge hosts tag n-7a3b2f0c91d4 --add potentially-affected,prod --remove staging",
				Flags: []ucli.Flag{
					&ucli.StringFlag{Name: "add", Usage: "comma-separated tags to add"},
					&ucli.StringFlag{Name: "remove", Usage: "comma-separated tags to remove"},
					outputFlag,
				},
				Action: a.tagHost,
			},
			a.hostsDeleteCommand(),
		},
	}
}

// hostJSON is the §9 shape of a host.
type hostJSON struct {
	NodeID         string   `json:"node_id"`
	Name           string   `json:"name"`
	Tenant         string   `json:"tenant"`
	Status         string   `json:"status"`
	Tags           []string `json:"tags"`
	KeyFingerprint string   `json:"key_fingerprint"`
	KeyRotatedAt   *string  `json:"key_rotated_at"`
	LastSeenAt     *string  `json:"last_seen_at"`
	// Routine rotation: the key's age (as 93d, and in seconds), when it falls due
	// under the rotation policies (null when none selects the host), and whether it
	// is past that.
	KeyAge     string  `json:"key_age"`
	KeyAgeSecs int64   `json:"key_age_secs"`
	KeyDueAt   *string `json:"key_due_at"`
	Overdue    bool    `json:"overdue"`
}

func hostStatus(s edgev1.HostStatus) string {
	switch s {
	case edgev1.HostStatus_HOST_STATUS_CONNECTED:
		return "Connected"
	case edgev1.HostStatus_HOST_STATUS_DISCONNECTED:
		return "Disconnected"
	case edgev1.HostStatus_HOST_STATUS_REVOKED:
		return "Revoked"
	}
	return "Unknown"
}

func toHostJSON(h *edgev1.Host) hostJSON {
	tags := h.GetTags()
	if tags == nil {
		tags = []string{}
	}
	return hostJSON{
		NodeID:         h.GetNodeId(),
		Name:           h.GetName(),
		Tenant:         h.GetTenant().GetId(),
		Status:         hostStatus(h.GetStatus()),
		Tags:           tags,
		KeyFingerprint: h.GetKeyFingerprint(),
		KeyRotatedAt:   timePtr(asTime(h.GetKeyRotatedAt())),
		LastSeenAt:     timePtr(asTime(h.GetLastSeenAt())),
		KeyAge:         keyage.Human(h.GetKeyAge().AsDuration()),
		KeyAgeSecs:     int64(h.GetKeyAge().AsDuration() / time.Second),
		KeyDueAt:       timePtr(asTime(h.GetKeyDueAt())),
		Overdue:        h.GetOverdue(),
	}
}

func overdueMark(j hostJSON) string {
	if j.Overdue {
		return "OVERDUE"
	}
	return "-"
}

func (a *app) listHosts(c *ucli.Context) error {
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
	resp, err := client.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{Target: c.String("target")}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeInvalidArgument {
			return usagef("bad --target: %s", orDefault(connectMessage(err), "invalid selector"))
		}
		return a.rpcError(err, p.Server)
	}
	hosts := resp.Msg.GetHosts()
	return writeList(a.env.Stdout, out, "hosts", hosts, toHostJSON, "NODE_ID\tNAME\tSTATUS\tTAGS\tKEY_FINGERPRINT\tKEY_ROTATED_AT\tLAST_SEEN_AT\tTENANT\tKEY_AGE\tKEY_DUE_AT\tOVERDUE",
		func(h *edgev1.Host) []string {
			j := toHostJSON(h)
			return []string{j.NodeID, orDash(j.Name), j.Status, orDash(strings.Join(j.Tags, ",")),
				orDash(j.KeyFingerprint), derefDash(j.KeyRotatedAt), derefDash(j.LastSeenAt), orDash(j.Tenant),
				j.KeyAge, derefDash(j.KeyDueAt), overdueMark(j)}
		})
}

func (a *app) getHost(c *ucli.Context) error {
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
	resp, err := client.GetHost(ctx, connect.NewRequest(&edgev1.GetHostRequest{NodeId: id}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return fmt.Errorf("no such host %q in your tenant: see `%s edge hosts list`", id, a.name)
		}
		return a.rpcError(err, p.Server)
	}
	h := resp.Msg.GetHost()
	j := toHostJSON(h)
	if out == "json" {
		return writeJSON(a.env.Stdout, j)
	}
	w := a.env.Stdout
	fmt.Fprintf(w, "node_id: %s\n", j.NodeID)
	fmt.Fprintf(w, "name: %s\n", j.Name)
	fmt.Fprintf(w, "tenant: %s (%s)\n", h.GetTenant().GetId(), h.GetTenant().GetKind())
	fmt.Fprintf(w, "status: %s\n", j.Status)
	fmt.Fprintf(w, "tags: %s\n", strings.Join(j.Tags, ","))
	fmt.Fprintf(w, "key_fingerprint: %s\n", j.KeyFingerprint)
	fmt.Fprintf(w, "key_rotated_at: %s\n", derefDash(j.KeyRotatedAt))
	fmt.Fprintf(w, "last_seen_at: %s\n", derefDash(j.LastSeenAt))
	fmt.Fprintf(w, "key_age: %s\n", j.KeyAge)
	fmt.Fprintf(w, "key_due_at: %s\n", derefDash(j.KeyDueAt))
	if j.Overdue {
		fmt.Fprintf(w, "overdue: yes (the key is older than its rotation policy allows)\n")
	}
	if e := asTime(h.GetEnrolledAt()); !e.IsZero() {
		fmt.Fprintf(w, "enrolled_at: %s\n", formatTime(e))
	}
	return nil
}

func derefDash(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

// connectMessage is the server's message without its generic "invalid request: "
// prefix: the caller already says which flag was wrong.
func connectMessage(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return strings.TrimPrefix(ce.Message(), "invalid request: ")
	}
	return ""
}

type setHostReport struct {
	NodeID          string `json:"node_id"`
	Name            string `json:"name"`
	SecurityContext string `json:"security_context"`
	RefreshSent     bool   `json:"refresh_sent"`
}

func (a *app) setHost(c *ucli.Context) error {
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
	resp, err := client.SetHostSecurityContext(ctx, connect.NewRequest(&edgev1.SetHostSecurityContextRequest{
		NodeId: id, SecurityContext: c.String("security-context"), RefreshNow: !c.Bool("no-refresh"),
	}))
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
			return fmt.Errorf("no such host %q in your tenant: see `%s edge hosts list`", id, a.name)
		case connect.CodeInvalidArgument:
			return usagef("bad --security-context: %s", orDefault(connectMessage(err), "invalid name"))
		case connect.CodePermissionDenied:
			return errors.New("your API token may not change hosts: an operator or admin token is needed")
		}
		return a.rpcError(err, p.Server)
	}
	h := resp.Msg.GetHost()
	rep := setHostReport{NodeID: h.GetNodeId(), Name: h.GetName(), SecurityContext: h.GetSecurityContext(), RefreshSent: resp.Msg.GetRefreshSent()}
	if out == "json" {
		return writeJSON(a.env.Stdout, rep)
	}
	w := a.env.Stdout
	fmt.Fprintf(w, "%s (%s) now evaluates tool calls in security context %q\n", rep.NodeID, orDash(rep.Name), rep.SecurityContext)
	switch {
	case rep.RefreshSent:
		fmt.Fprintln(w, "token refresh: requested from the host's live daemon; the next call uses the new context")
	case c.Bool("no-refresh"):
		fmt.Fprintf(w, "token refresh: not requested; it applies at the host's next refresh (`%s edge token refresh` on the host)\n", a.name)
	default:
		fmt.Fprintf(w, "token refresh: the host is not connected; it applies when its daemon next gets a token\n")
	}
	return nil
}

func (a *app) tagHost(c *ucli.Context) error {
	id, err := oneArg(c, "NODE_ID")
	if err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	add, remove := splitTags(c.String("add")), splitTags(c.String("remove"))
	if len(add) == 0 && len(remove) == 0 {
		return usagef("nothing to change: give --add a,b and/or --remove c (see `%s --help`)", c.Command.HelpName)
	}
	for _, t := range add {
		if slices.Contains(remove, t) {
			return usagef("tag %q is in both --add and --remove: give it in one of them", t)
		}
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.UpdateHostTags(ctx, connect.NewRequest(&edgev1.UpdateHostTagsRequest{NodeId: id, Add: add, Remove: remove}))
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
			return fmt.Errorf("no such host %q in your tenant: see `%s edge hosts list`", id, a.name)
		case connect.CodeInvalidArgument:
			return usagef("%s: nothing was changed", orDefault(connectMessage(err), "invalid tag"))
		case connect.CodePermissionDenied:
			return errors.New("your API token may not change hosts: an operator or admin token is needed")
		}
		return a.rpcError(err, p.Server)
	}
	j := toHostJSON(resp.Msg.GetHost())
	if out == "json" {
		return writeJSON(a.env.Stdout, j)
	}
	fmt.Fprintf(a.env.Stdout, "%s (%s) tags: %s\n", j.NodeID, orDash(j.Name), orDash(strings.Join(j.Tags, ",")))
	return nil
}
