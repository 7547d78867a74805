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

// An audit page shows at most maxAuditShown entries and reads at most
// maxAuditScan entry ids, newest first.
const (
	maxAuditShown = 500
	maxAuditScan  = 20000
	auditWindow   = 1000
)

// lastAuditID finds the newest entry id the caller can see (0 when none): the API
// lists oldest first after an id, so probe upward, then halve.
func (c *Console) lastAuditID(r *http.Request, s *session, node string) (int64, error) {
	exists := func(after int64) (bool, error) {
		resp, err := c.api.ListAudit(r.Context(), bearer(s, &edgev1.ListAuditRequest{NodeId: node, AfterId: after, Limit: 1}))
		if err != nil {
			return false, err
		}
		return len(resp.Msg.GetEntries()) > 0, nil
	}
	lo, hi := int64(0), int64(1) // an entry after lo exists; none after hi (once found)
	if ok, err := exists(0); err != nil || !ok {
		return 0, err
	}
	for {
		ok, err := exists(hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := exists(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}

// auditPage shows the newest entries first, filtered by node (in the API), action
// and actor (here), with the chain verification's answer.
func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	v := auditView{Node: strings.TrimSpace(q.Get("node")), Action: strings.TrimSpace(q.Get("action")), Actor: strings.TrimSpace(q.Get("actor"))}
	top, err := c.lastAuditID(r, s, v.Node)
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	// Walk back from the newest in windows of ids: a window (lo, hi] holds at most
	// auditWindow entries, so one call of that limit reads all of them.
	for hi := top; hi > 0 && len(v.Entries) < maxAuditShown; {
		if top-hi >= maxAuditScan {
			v.Truncated = true
			break
		}
		lo := max(hi-auditWindow, 0)
		resp, err := c.api.ListAudit(r.Context(), bearer(s, &edgev1.ListAuditRequest{NodeId: v.Node, AfterId: lo, Limit: auditWindow}))
		if err != nil {
			c.apiError(w, r, s, err)
			return
		}
		es := resp.Msg.GetEntries()
		for i := len(es) - 1; i >= 0 && len(v.Entries) < maxAuditShown; i-- {
			e := es[i]
			if e.GetId() > hi {
				continue
			}
			v.Scanned++
			if v.Action != "" && !strings.Contains(e.GetAction(), v.Action) || v.Actor != "" && !strings.Contains(e.GetActor(), v.Actor) {
				continue
			}
			v.Entries = append(v.Entries, e)
		}
		hi = lo
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
