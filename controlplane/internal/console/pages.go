package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

type loginView struct{ Error string }

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if s := c.sessions.lookup(r, c.cfg.Now()); s != nil {
		http.Redirect(w, r, "/ui/hosts", http.StatusSeeOther)
		return
	}
	c.render(w, r, nil, http.StatusOK, "login", loginView{})
}

// login signs in with an API token posted in the form body (never in a URL): the
// API itself says whether it is valid and which role it has.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	token := strings.TrimSpace(r.PostFormValue("token"))
	if token == "" {
		c.render(w, r, nil, http.StatusBadRequest, "login", loginView{Error: "paste an API token (the text of `aegisctl api-tokens create`, or the admin.token file of a fresh control plane)"})
		return
	}
	who, err := c.whoAmI(r.Context(), token)
	if err != nil {
		status, msg := http.StatusUnauthorized, "that API token is invalid or revoked: check you copied all of it, or ask an admin for a new one"
		if code := connect.CodeOf(err); code != connect.CodeUnauthenticated {
			status, msg = http.StatusServiceUnavailable, "the token could not be checked right now: retry in a moment"
		}
		c.cfg.Logger.Info("console: sign-in refused", "code", connect.CodeOf(err).String(), "reason", ReasonUnauthorized)
		w.Header().Set("X-Aegis-Refused", ReasonUnauthorized)
		c.render(w, r, nil, status, "login", loginView{Error: msg})
		return
	}
	now := c.cfg.Now()
	tenant := who.GetTenant().GetId()
	if n := who.GetTenant().GetName(); n != "" {
		tenant += " (" + n + ")"
	}
	cookie, err := c.sessions.create(c.cfg.Rand, &session{
		token: token, tokenID: who.GetTokenId(), role: who.GetRole(), tenant: tenant,
		created: now, expires: now.Add(c.cfg.SessionTTL),
	}, now)
	if err != nil {
		c.refuse(w, r, nil, http.StatusInternalServerError, ReasonInternalError, "could not start a session: retry")
		return
	}
	setSessionCookie(w, cookie, c.cfg.SessionTTL)
	c.cfg.Logger.Info("console: signed in", "operator", who.GetTokenId(), "role", who.GetRole(), "tenant", who.GetTenant().GetId())
	http.Redirect(w, r, "/ui/hosts", http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	c.sessions.drop(r)
	clearSessionCookie(w)
	c.cfg.Logger.Info("console: signed out", "operator", s.tokenID)
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// hostRow is one host as the list and its live updates show it.
type hostRow struct {
	NodeID      string   `json:"node_id"`
	Name        string   `json:"name"`
	Status      string   `json:"status"`
	Tags        []string `json:"tags"`
	Fingerprint string   `json:"fingerprint"`
	KeyAge      string   `json:"key_age"`
	KeyDue      string   `json:"key_due"`
	LastSeen    string   `json:"last_seen"`
	Tenant      string   `json:"tenant,omitempty"`
}

type hostsList struct {
	Total        int       `json:"total"`
	Connected    int       `json:"connected"`
	Disconnected int       `json:"disconnected"`
	Revoked      int       `json:"revoked"`
	Hosts        []hostRow `json:"hosts"`
	Next         string    `json:"next"`
}

type hostsView struct {
	Target      string
	Page        string
	Size        int
	Error       string
	ErrorColumn int
	List        hostsList
	NextURL     string
	FirstURL    string
	EventsURL   string
	ShowTenant  bool
}

func statusText(s edgev1.HostStatus) string {
	switch s {
	case edgev1.HostStatus_HOST_STATUS_CONNECTED:
		return "Connected"
	case edgev1.HostStatus_HOST_STATUS_REVOKED:
		return "Revoked"
	}
	return "Disconnected"
}

// keyDue says when the host's key is due under the rotation policies that select it:
// "-" without one, and "overdue since ..." in words (not colour alone) once past it.
func keyDue(h *edgev1.Host) string {
	due := h.GetKeyDueAt()
	if due == nil {
		return "-"
	}
	if h.GetOverdue() {
		return "overdue since " + formatTime(due)
	}
	return formatTime(due)
}

// keyAge is how long the host's current key has been in use: since its last
// rotation, or since enrollment.
func keyAge(h *edgev1.Host, now time.Time) string {
	since := h.GetKeyRotatedAt()
	if since == nil {
		since = h.GetEnrolledAt()
	}
	if since == nil {
		return "-"
	}
	return ageText(now.Sub(since.AsTime()))
}

func ageText(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "<1m"
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

func formatTime(v any) string {
	var t time.Time
	switch x := v.(type) {
	case time.Time:
		t = x
	case interface{ AsTime() time.Time }:
		if x == nil {
			return "-"
		}
		if p, ok := x.(interface{ IsValid() bool }); ok && !p.IsValid() {
			return "-"
		}
		t = x.AsTime()
	}
	if t.IsZero() || t.Unix() == 0 {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func joinTags(tags []string) string {
	if len(tags) == 0 {
		return "-"
	}
	return strings.Join(tags, ",")
}

// hostQuery reads the list's parameters: target (a selector), page (a page token)
// and size.
func hostQuery(r *http.Request) (target, page string, size int) {
	q := r.URL.Query()
	target, page = strings.TrimSpace(q.Get("target")), q.Get("page")
	size = DefaultPageSize
	if n, err := strconv.Atoi(q.Get("size")); err == nil && n > 0 && n <= 500 {
		size = n
	}
	return target, page, size
}

func (c *Console) listHosts(r *http.Request, s *session, target, page string, size int) (hostsList, error) {
	resp, err := c.api.ListHosts(r.Context(), bearer(s, &edgev1.ListHostsRequest{Target: target, PageSize: int32(size), PageToken: page}))
	if err != nil {
		return hostsList{}, err
	}
	m := resp.Msg
	now := c.cfg.Now()
	out := hostsList{
		Total: int(m.GetTotalCount()), Connected: int(m.GetCounts().GetConnected()),
		Disconnected: int(m.GetCounts().GetDisconnected()), Revoked: int(m.GetCounts().GetRevoked()),
		Next: m.GetNextPageToken(), Hosts: []hostRow{},
	}
	for _, h := range m.GetHosts() {
		row := hostRow{
			NodeID: h.GetNodeId(), Name: h.GetName(), Status: statusText(h.GetStatus()), Tags: h.GetTags(),
			Fingerprint: h.GetKeyFingerprint(), KeyAge: keyAge(h, now), KeyDue: keyDue(h), LastSeen: formatTime(h.GetLastSeenAt()),
		}
		if s.role == "admin" {
			row.Tenant = h.GetTenant().GetId()
		}
		if row.Tags == nil {
			row.Tags = []string{}
		}
		out.Hosts = append(out.Hosts, row)
	}
	return out, nil
}

func hostsURL(base, target, page string, size int) string {
	q := url.Values{}
	if target != "" {
		q.Set("target", target)
	}
	if page != "" {
		q.Set("page", page)
	}
	if size != DefaultPageSize {
		q.Set("size", strconv.Itoa(size))
	}
	if len(q) == 0 {
		return base
	}
	return base + "?" + q.Encode()
}

func (c *Console) hostsPage(w http.ResponseWriter, r *http.Request, s *session) {
	target, page, size := hostQuery(r)
	v := hostsView{Target: target, Page: page, Size: size, ShowTenant: s.role == "admin",
		EventsURL: hostsURL("/ui/events/hosts", target, page, size), FirstURL: hostsURL("/ui/hosts", target, "", size)}
	list, err := c.listHosts(r, s, target, page, size)
	if err != nil {
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			c.apiError(w, r, s, err)
			return
		}
		// A bad selector: the CLI's column-precise message, the form kept for a fix.
		var ce *connect.Error
		if errors.As(err, &ce) {
			v.Error = ce.Message()
		}
		v.ErrorColumn = errorColumn(v.Error)
		v.EventsURL = ""
		w.Header().Set("X-Aegis-Refused", ReasonInvalid)
		c.render(w, r, s, http.StatusBadRequest, "hosts", v)
		return
	}
	v.List = list
	if list.Next != "" {
		v.NextURL = hostsURL("/ui/hosts", target, list.Next, size)
	}
	c.render(w, r, s, http.StatusOK, "hosts", v)
}

// errorColumn finds "at column N" in a selector error (0 if absent).
func errorColumn(msg string) int {
	_, rest, ok := strings.Cut(msg, "at column ")
	if !ok {
		return 0
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	n, _ := strconv.Atoi(rest[:end])
	return n
}

type hostView struct {
	Host      *edgev1.Host
	Status    string
	KeyAge    string
	KeyDue    string
	Tags      string
	Rotations []*edgev1.AuditEntry
	Audit     []*edgev1.AuditEntry
	Tenant    string
	Message   string
}

func (c *Console) hostPage(w http.ResponseWriter, r *http.Request, s *session) {
	node := r.PathValue("node")
	resp, err := c.api.GetHost(r.Context(), bearer(s, &edgev1.GetHostRequest{NodeId: node}))
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	h := resp.Msg.GetHost()
	v := hostView{Host: h, Status: statusText(h.GetStatus()), KeyAge: keyAge(h, c.cfg.Now()), KeyDue: keyDue(h), Tags: strings.Join(h.GetTags(), ","),
		Tenant: h.GetTenant().GetId(), Message: doneMessages[r.URL.Query().Get("done")]}
	if n := h.GetTenant().GetName(); n != "" {
		v.Tenant += " (" + n + ")"
	}
	var after int64
	for range 20 { // at most 20,000 entries for one host page
		a, err := c.api.ListAudit(r.Context(), bearer(s, &edgev1.ListAuditRequest{NodeId: node, AfterId: after, Limit: 1000}))
		if err != nil {
			c.apiError(w, r, s, err)
			return
		}
		for _, e := range a.Msg.GetEntries() {
			v.Audit = append(v.Audit, e)
			if e.GetAction() == "rotate" {
				v.Rotations = append(v.Rotations, e)
			}
			after = e.GetId()
		}
		if len(a.Msg.GetEntries()) < 1000 {
			break
		}
	}
	slices.Reverse(v.Audit)
	slices.Reverse(v.Rotations)
	c.render(w, r, s, http.StatusOK, "host", v)
}

// doneMessages are the notes a host page shows after a change (by key, so no text
// of the request is reflected into the page).
var doneMessages = map[string]string{"revoked": "Revoked. The host must enroll again to come back.", "tags": "Tags updated."}

func (c *Console) revokeConfirmPage(w http.ResponseWriter, r *http.Request, s *session) {
	resp, err := c.api.GetHost(r.Context(), bearer(s, &edgev1.GetHostRequest{NodeId: r.PathValue("node")}))
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "revoke", hostView{Host: resp.Msg.GetHost(), Status: statusText(resp.Msg.GetHost().GetStatus())})
}

// revoke revokes the host once the form confirms it by the host's node id.
func (c *Console) revoke(w http.ResponseWriter, r *http.Request, s *session) {
	node := r.PathValue("node")
	if r.PostFormValue("confirm") != node {
		c.refuse(w, r, s, http.StatusBadRequest, ReasonNotConfirmed, "the revocation was not confirmed for this host: open the host's page and use its Revoke button")
		return
	}
	resp, err := c.api.RevokeHost(r.Context(), bearer(s, &edgev1.RevokeHostRequest{NodeId: node}))
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	c.cfg.Logger.Info("console: host revoked", "operator", s.tokenID, "node", node, "stream_dropped", resp.Msg.GetStreamDropped())
	http.Redirect(w, r, "/ui/hosts/"+url.PathEscape(node)+"?done=revoked", http.StatusSeeOther)
}

func splitTags(s string) []string {
	var out []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

func (c *Console) updateTags(w http.ResponseWriter, r *http.Request, s *session) {
	node := r.PathValue("node")
	add, remove := splitTags(r.PostFormValue("add")), splitTags(r.PostFormValue("remove"))
	if len(add)+len(remove) == 0 {
		c.refuse(w, r, s, http.StatusBadRequest, ReasonInvalid, "name at least one tag to add or remove (comma-separated)")
		return
	}
	if _, err := c.api.UpdateHostTags(r.Context(), bearer(s, &edgev1.UpdateHostTagsRequest{NodeId: node, Add: add, Remove: remove})); err != nil {
		c.apiError(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/ui/hosts/"+url.PathEscape(node)+"?done=tags", http.StatusSeeOther)
}
