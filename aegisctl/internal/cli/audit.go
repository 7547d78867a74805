package cli

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	ucli "github.com/urfave/cli/v2"
)

func (a *app) auditCommand() *ucli.Command {
	return &ucli.Command{
		Name:        "audit",
		Usage:       "read and verify the audit trail",
		UsageText:   a.name + " audit list|verify",
		Description: "Every state change (enrollment, rotation, refresh, revocation, exec, token and\ntenant changes) is an entry that carries the hash of the one before it.\n\nExample:\n  " + a.name + " audit list --node n-1a2b3c4d\n  " + a.name + " audit verify",
		Subcommands: []*ucli.Command{
			{
				Name:      "list",
				Usage:     "list audit entries, oldest first (your tenant's; an admin's: all)",
				UsageText: a.name + " audit list [--after ID] [--limit N] [--node NODE_ID] [-o json]",
				Description: "Page with --after the last ID shown.\n\n" +
					"Example:\n  " + a.name + " audit list --limit 20 -o json",
				Flags: []ucli.Flag{
					&ucli.Int64Flag{Name: "after", Usage: "only entries with an ID above this"},
					&ucli.IntFlag{Name: "limit", Value: 100, Usage: "at most this many entries (at most 1000)"},
					&ucli.StringFlag{Name: "node", Usage: "only this host's entries"},
					outputFlag,
				},
				Action: a.listAudit,
			},
			{
				Name:      "verify",
				Usage:     "check the audit trail's hash chain (admins)",
				UsageText: a.name + " audit verify [-o json]",
				Description: "Exits 0 when every entry matches its hash and follows the one before it;\n" +
					"1 naming the first entry that does not (edited, deleted or moved).\n\n" +
					"Example:\n  " + a.name + " audit verify",
				Flags:  []ucli.Flag{outputFlag},
				Action: a.verifyAudit,
			},
		},
	}
}

type auditEntryJSON struct {
	ID       int64             `json:"id"`
	At       *string           `json:"at"`
	TenantID string            `json:"tenant"`
	Actor    string            `json:"actor"`
	Action   string            `json:"action"`
	NodeID   string            `json:"node_id"`
	Result   string            `json:"result"`
	Details  map[string]string `json:"details"`
	PrevHash string            `json:"prev_hash"`
	Hash     string            `json:"hash"`
}

func toAuditEntryJSON(e *edgev1.AuditEntry) auditEntryJSON {
	details := e.GetDetails()
	if details == nil {
		details = map[string]string{}
	}
	return auditEntryJSON{
		ID:       e.GetId(),
		At:       timePtr(asTime(e.GetAt())),
		TenantID: e.GetTenantId(),
		Actor:    e.GetActor(),
		Action:   e.GetAction(),
		NodeID:   e.GetNodeId(),
		Result:   e.GetResult(),
		Details:  details,
		PrevHash: e.GetPrevHash(),
		Hash:     e.GetHash(),
	}
}

// formatDetails is k=v pairs sorted by key, for the table.
func formatDetails(d map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(d)) {
		parts = append(parts, k+"="+d[k])
	}
	return strings.Join(parts, ",")
}

func (a *app) listAudit(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	limit := c.Int("limit")
	if limit < 1 || limit > 1000 {
		return usagef("--limit must be between 1 and 1000 (got %d)", limit)
	}
	if c.Int64("after") < 0 {
		return usagef("--after must not be negative")
	}
	client, p, err := a.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	resp, err := client.ListAudit(ctx, connect.NewRequest(&edgev1.ListAuditRequest{
		AfterId: c.Int64("after"), Limit: int32(limit), NodeId: c.String("node"),
	}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	es := resp.Msg.GetEntries()
	return writeList(a.env.Stdout, out, "entries", es, toAuditEntryJSON, "ID\tAT\tACTOR\tACTION\tNODE\tRESULT\tDETAILS",
		func(e *edgev1.AuditEntry) []string {
			return []string{fmt.Sprint(e.GetId()), formatTime(asTime(e.GetAt())), e.GetActor(), e.GetAction(),
				orDash(e.GetNodeId()), e.GetResult(), orDash(formatDetails(e.GetDetails()))}
		})
}

func (a *app) verifyAudit(c *ucli.Context) error {
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
	// The whole log is read: give a large one time.
	ctx, cancel := context.WithTimeout(c.Context, 5*time.Minute)
	defer cancel()
	resp, err := client.VerifyAudit(ctx, connect.NewRequest(&edgev1.VerifyAuditRequest{}))
	if err != nil {
		return a.rpcError(err, p.Server)
	}
	m := resp.Msg
	if out == "json" {
		if err := writeJSON(a.env.Stdout, struct {
			OK             bool   `json:"ok"`
			EntriesChecked int64  `json:"entries_checked"`
			FirstBadID     int64  `json:"first_bad_id"`
			Problem        string `json:"problem"`
		}{m.GetOk(), m.GetEntriesChecked(), m.GetFirstBadId(), m.GetProblem()}); err != nil {
			return err
		}
		if !m.GetOk() {
			return exitStatus{code: exitError}
		}
		return nil
	}
	if !m.GetOk() {
		return fmt.Errorf("audit chain broken at entry %d: %s (%s before it verified); see `%s audit list --after %d --limit 2`",
			m.GetFirstBadId(), m.GetProblem(), plural(int(m.GetEntriesChecked()), "entry", "entries"), a.name, max(m.GetFirstBadId()-2, 0))
	}
	fmt.Fprintf(a.env.Stdout, "audit chain intact: %s\n", plural(int(m.GetEntriesChecked()), "entry", "entries"))
	return nil
}
