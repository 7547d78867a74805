package console

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

type auditView struct {
	Node, Action, Actor string
	Entries             []*edgev1.AuditEntry
	Scanned             int
	Truncated           bool
	// Verify: the chain verification (admins only; the API decides).
	Verified   bool
	VerifyOK   bool
	Checked    int64
	FirstBadID int64
	Problem    string
	VerifyNote string
}

// maxAuditScan bounds how many entries one audit page reads.
const maxAuditScan = 20000

// auditPage shows the newest entries first, filtered by node (in the API), action
// and actor (here), with the chain verification's answer.
func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	v := auditView{Node: strings.TrimSpace(q.Get("node")), Action: strings.TrimSpace(q.Get("action")), Actor: strings.TrimSpace(q.Get("actor"))}
	var after int64
	for v.Scanned < maxAuditScan {
		resp, err := c.api.ListAudit(r.Context(), bearer(s, &edgev1.ListAuditRequest{NodeId: v.Node, AfterId: after, Limit: 1000}))
		if err != nil {
			c.apiError(w, r, s, err)
			return
		}
		es := resp.Msg.GetEntries()
		for _, e := range es {
			after = e.GetId()
			v.Scanned++
			if v.Action != "" && !strings.Contains(e.GetAction(), v.Action) || v.Actor != "" && !strings.Contains(e.GetActor(), v.Actor) {
				continue
			}
			v.Entries = append(v.Entries, e)
		}
		if len(es) < 1000 {
			break
		}
	}
	v.Truncated = v.Scanned >= maxAuditScan
	slices.Reverse(v.Entries)
	if len(v.Entries) > 500 {
		v.Entries = v.Entries[:500]
	}
	resp, err := c.api.VerifyAudit(r.Context(), bearer(s, &edgev1.VerifyAuditRequest{}))
	switch {
	case err == nil:
		v.Verified, v.VerifyOK, v.Checked = true, resp.Msg.GetOk(), resp.Msg.GetEntriesChecked()
		v.FirstBadID, v.Problem = resp.Msg.GetFirstBadId(), resp.Msg.GetProblem()
	case connect.CodeOf(err) == connect.CodePermissionDenied:
		v.VerifyNote = "The chain is verified across every tenant, so it takes an admin token; sign in as an admin to see it."
	default:
		v.VerifyNote = "The chain could not be verified right now: reload to retry."
	}
	c.render(w, r, s, http.StatusOK, "audit", v)
}

func details(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(k + "=" + strconv.Quote(m[k]))
	}
	return b.String()
}
