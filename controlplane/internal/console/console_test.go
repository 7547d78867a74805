package console_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"google.golang.org/protobuf/types/known/durationpb"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/console"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// clock is a settable protocol clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// browser is an HTTPS client with its own cookie jar that does not follow
// redirects, so each answer can be looked at.
type browser struct {
	t   testing.TB
	cp  *cptest.Server
	hc  *http.Client
	jar *cookiejar.Jar
}

func newBrowser(t testing.TB, cp *cptest.Server) *browser {
	jar, _ := cookiejar.New(nil)
	base := cp.HTTPClient()
	return &browser{t: t, cp: cp, jar: jar, hc: &http.Client{
		Transport:     base.Transport,
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

type answer struct {
	*http.Response
	body string
}

func (b *browser) do(method, path string, form url.Values, header map[string]string) answer {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.cp.URL+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return answer{resp, string(raw)}
}

func (b *browser) get(path string) answer { return b.do("GET", path, nil, nil) }

func (b *browser) signIn(token string) answer {
	b.t.Helper()
	a := b.do("POST", "/ui/login", url.Values{"token": {token}}, nil)
	if a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/hosts" {
		b.t.Fatalf("sign in: %d %s\n%s", a.StatusCode, a.Header.Get("Location"), a.body)
	}
	return a
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`)

func (b *browser) csrf() string {
	b.t.Helper()
	m := csrfMeta.FindStringSubmatch(b.get("/ui/hosts").body)
	if m == nil {
		b.t.Fatal("no csrf-token meta on the hosts page")
	}
	return m[1]
}

func mustStatus(t *testing.T, a answer, want int, reason string) {
	t.Helper()
	if a.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d\n%s", a.Request.Method, a.Request.URL.Path, a.StatusCode, want, a.body)
	}
	if got := a.Header.Get("X-Aegis-Refused"); got != reason {
		t.Fatalf("%s %s: refused reason %q, want %q", a.Request.Method, a.Request.URL.Path, got, reason)
	}
}

func pubkey(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func tenantOf(t testing.TB, cp *cptest.Server) string {
	t.Helper()
	who, err := cp.AdminClient().WhoAmI(context.Background(), connect.NewRequest(&edgev1.WhoAmIRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return who.Msg.GetTenant().GetId()
}

func addHosts(t testing.TB, cp *cptest.Server, tenant, prefix string, n int, tags ...string) []string {
	t.Helper()
	var ids []string
	err := cp.Store.InTx(context.Background(), func(tx store.Tx) error {
		for i := range n {
			id := fmt.Sprintf("n-%s%05d", prefix, i)
			ids = append(ids, id)
			if err := tx.InsertDaemon(context.Background(), store.Daemon{
				NodeID: id, TenantID: tenant, DisplayName: fmt.Sprintf("%s-%05d", prefix, i), Tags: tags, OS: "linux",
				PublicKey: pubkey(id), Status: store.DaemonActive, EnrolledAt: time.Now().UTC(),
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func apiToken(t *testing.T, cp *cptest.Server, tenant, role string) string {
	t.Helper()
	resp, err := cp.AdminClient().CreateAPIToken(context.Background(), connect.NewRequest(&edgev1.CreateAPITokenRequest{TenantId: tenant, Role: role, Name: role}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetToken()
}

func TestSignInSessionAndSignOut(t *testing.T) {
	clk := &clock{t: time.Now()}
	cp := cptest.Start(t, cptest.Options{Now: clk.Now})
	b := newBrowser(t, cp)

	// Every page but sign-in sends a signed-out browser to sign in.
	if a := b.get("/ui/hosts"); a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/login" {
		t.Fatalf("signed out /ui/hosts: %d %s", a.StatusCode, a.Header.Get("Location"))
	}
	// A wrong token: refused, no cookie, nothing of the token in the page.
	bad := "0123456789abcdef.0123456789abcdef0123456789abcdef"
	a := b.do("POST", "/ui/login", url.Values{"token": {bad}}, nil)
	mustStatus(t, a, http.StatusUnauthorized, console.ReasonUnauthorized)
	if len(a.Cookies()) != 0 || strings.Contains(a.body, "0123456789abcdef") || !strings.Contains(a.body, "invalid or revoked") {
		t.Fatalf("bad sign-in: cookies %v, body\n%s", a.Cookies(), a.body)
	}
	if a := b.do("POST", "/ui/login", url.Values{"token": {""}}, nil); a.StatusCode != http.StatusBadRequest {
		t.Fatalf("empty token: %d", a.StatusCode)
	}

	a = b.signIn(cp.AdminToken)
	var c *http.Cookie
	for _, k := range a.Cookies() {
		if k.Name == "aegis_console" {
			c = k
		}
	}
	if c == nil || !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode || c.Path != "/ui/" || c.MaxAge != int(console.DefaultSessionTTL/time.Second) {
		t.Fatalf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict, Path=/ui/, Max-Age 8h", c)
	}
	if strings.Contains(c.Value, cp.AdminToken) || strings.Contains(a.Header.Get("Location"), cp.AdminToken) {
		t.Fatal("the API token reached the cookie or a URL")
	}
	page := b.get("/ui/hosts")
	if page.StatusCode != http.StatusOK || !strings.Contains(page.body, "admin of tenant") {
		t.Fatalf("hosts page after sign-in: %d\n%s", page.StatusCode, page.body)
	}
	id, _, _ := strings.Cut(cp.AdminToken, ".")
	_, secret, _ := strings.Cut(cp.AdminToken, ".")
	if strings.Contains(page.body, secret) || !strings.Contains(page.body, "admin") || strings.Contains(page.body, id+"."+secret) {
		t.Fatal("the API token's secret reached a page")
	}

	// Sign-out needs the CSRF token, ends the session, and the old cookie is dead.
	mustStatus(t, b.do("POST", "/ui/logout", url.Values{}, nil), http.StatusForbidden, console.ReasonCSRF)
	csrf := b.csrf()
	if a := b.do("POST", "/ui/logout", url.Values{"csrf": {csrf}}, nil); a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/login" {
		t.Fatalf("sign out: %d %s", a.StatusCode, a.Header.Get("Location"))
	}
	if a := b.get("/ui/hosts"); a.StatusCode != http.StatusSeeOther {
		t.Fatalf("after sign-out: %d, want a redirect to sign in", a.StatusCode)
	}
	replay := newBrowser(t, cp)
	replay.jar.SetCookies(mustURL(cp.URL+"/ui/"), []*http.Cookie{{Name: "aegis_console", Value: c.Value}})
	if a := replay.get("/ui/hosts"); a.StatusCode != http.StatusSeeOther {
		t.Fatalf("replayed cookie after sign-out: %d, want a redirect to sign in", a.StatusCode)
	}

	// A session expires with its Max-Age, on the server too.
	b.signIn(cp.AdminToken)
	if a := b.get("/ui/hosts"); a.StatusCode != http.StatusOK {
		t.Fatalf("signed in again: %d", a.StatusCode)
	}
	clk.Add(console.DefaultSessionTTL + time.Second)
	if a := b.get("/ui/hosts"); a.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the session TTL: %d, want a redirect to sign in", a.StatusCode)
	}
	mustStatus(t, b.do("POST", "/ui/logout", url.Values{"csrf": {csrf}}, nil), http.StatusUnauthorized, console.ReasonSignedOut)
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// Session ends when the API token it signed in with is revoked.
func TestRevokedTokenEndsSession(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	tenant := tenantOf(t, cp)
	tok := apiToken(t, cp, tenant, "operator")
	b := newBrowser(t, cp)
	b.signIn(tok)
	id, _, _ := strings.Cut(tok, ".")
	if _, err := cp.AdminClient().RevokeAPIToken(context.Background(), connect.NewRequest(&edgev1.RevokeAPITokenRequest{Id: id})); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, b.get("/ui/hosts"), http.StatusUnauthorized, console.ReasonUnauthorized)
	if a := b.get("/ui/hosts"); a.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the refusal the session is gone: %d", a.StatusCode)
	}
}

var (
	scriptTag   = regexp.MustCompile(`(?i)<script[^>]*>[^<]*`)
	inlineOther = regexp.MustCompile(`(?i)<[a-z][^>]*\s(on[a-z]+|style)=|<style|javascript:`)
)

// inlineScript finds a script with a body or without src, an event handler
// attribute, inline style or a javascript: URL.
func inlineScript(page string) string {
	for _, tag := range scriptTag.FindAllString(page, -1) {
		if !strings.Contains(tag, ` src="/ui/static/`) || !strings.HasSuffix(tag, ">") {
			return tag
		}
	}
	return inlineOther.FindString(page)
}

func TestCSPAndNoInlineScript(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	tenant := tenantOf(t, cp)
	ids := addHosts(t, cp, tenant, "web", 2, "prod")
	b := newBrowser(t, cp)
	check := func(a answer) {
		t.Helper()
		if got := a.Header.Get("Content-Security-Policy"); got != console.ContentSecurityPolicy {
			t.Fatalf("%s: CSP %q", a.Request.URL.Path, got)
		}
		for _, want := range []string{"script-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} {
			if !strings.Contains(a.Header.Get("Content-Security-Policy"), want) {
				t.Fatalf("%s: CSP lacks %s", a.Request.URL.Path, want)
			}
		}
		if a.Header.Get("X-Content-Type-Options") != "nosniff" || a.Header.Get("X-Frame-Options") != "DENY" {
			t.Fatalf("%s: headers %v", a.Request.URL.Path, a.Header)
		}
		if m := inlineScript(a.body); m != "" {
			t.Fatalf("%s: inline script or style %q", a.Request.URL.Path, m)
		}
	}
	// A host named with markup (names come from enrollment): shown as text.
	err := cp.Store.InTx(context.Background(), func(tx store.Tx) error {
		return tx.InsertDaemon(context.Background(), store.Daemon{NodeID: "n-xss", TenantID: tenant, DisplayName: `<script>alert(1)</script><img src=x onerror=alert(2)>`,
			PublicKey: pubkey("n-xss"), Status: store.DaemonActive})
	})
	if err != nil {
		t.Fatal(err)
	}
	check(b.get("/ui/login"))
	b.signIn(cp.AdminToken)
	for _, p := range []string{"/ui/hosts", "/ui/hosts/n-xss", "/ui/hosts/n-xss/revoke"} {
		if a := b.get(p); strings.Contains(a.body, "<script>alert") || strings.Contains(a.body, "<img") || !strings.Contains(a.body, "&lt;script&gt;alert(1)") {
			t.Fatalf("%s: the host's name is not escaped", p)
		}
	}
	for _, p := range []string{"/ui/hosts", "/ui/hosts?target=tags%3DAnyOf(prod", "/ui/hosts/" + ids[0], "/ui/hosts/" + ids[0] + "/revoke",
		"/ui/fleet", "/ui/audit", "/ui/hosts/n-nosuch", "/ui/static/app.js", "/ui/static/app.css"} {
		check(b.get(p))
	}
	// Static assets are served with their types (nosniff would block a wrong one).
	if ct := b.get("/ui/static/app.js").Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
		t.Fatalf("app.js Content-Type %q", ct)
	}
}

func TestCSRFAndCrossOrigin(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	tenant := tenantOf(t, cp)
	id := addHosts(t, cp, tenant, "web", 1)[0]
	b := newBrowser(t, cp)
	b.signIn(cp.AdminToken)
	csrf := b.csrf()
	revoke := "/ui/hosts/" + id + "/revoke"
	form := func(csrf string) url.Values { return url.Values{"csrf": {csrf}, "confirm": {id}} }

	mustStatus(t, b.do("POST", revoke, form(""), nil), http.StatusForbidden, console.ReasonCSRF)
	mustStatus(t, b.do("POST", revoke, form("forged"+csrf[6:]), nil), http.StatusForbidden, console.ReasonCSRF)
	// A cross-site form post, as a browser marks it, with the right token even.
	mustStatus(t, b.do("POST", revoke, form(csrf), map[string]string{"Sec-Fetch-Site": "cross-site"}), http.StatusForbidden, console.ReasonCrossOrigin)
	mustStatus(t, b.do("POST", revoke, form(csrf), map[string]string{"Sec-Fetch-Site": "same-site"}), http.StatusForbidden, console.ReasonCrossOrigin)
	mustStatus(t, b.do("POST", revoke, form(csrf), map[string]string{"Origin": "https://evil.example"}), http.StatusForbidden, console.ReasonCrossOrigin)
	// Sign-in is guarded too (login CSRF).
	mustStatus(t, b.do("POST", "/ui/login", url.Values{"token": {cp.AdminToken}}, map[string]string{"Sec-Fetch-Site": "cross-site"}), http.StatusForbidden, console.ReasonCrossOrigin)
	// Not confirmed for this host.
	mustStatus(t, b.do("POST", revoke, url.Values{"csrf": {csrf}}, nil), http.StatusBadRequest, console.ReasonNotConfirmed)
	if d, _ := cp.Store.GetDaemon(context.Background(), id); d.Status != store.DaemonActive {
		t.Fatalf("a refused revoke changed the host: %s", d.Status)
	}
	// The page's own form: revoked, and the audit says who.
	a := b.do("POST", revoke, form(csrf), map[string]string{"Sec-Fetch-Site": "same-origin"})
	if a.StatusCode != http.StatusSeeOther || !strings.HasSuffix(a.Header.Get("Location"), "?done=revoked") {
		t.Fatalf("revoke: %d %s\n%s", a.StatusCode, a.Header.Get("Location"), a.body)
	}
	if d, _ := cp.Store.GetDaemon(context.Background(), id); d.Status != store.DaemonRevoked {
		t.Fatalf("after revoke: %s", d.Status)
	}
	if p := b.get("/ui/hosts/" + id + "?done=<script>x</script>"); strings.Contains(p.body, "<script>x") || !strings.Contains(p.body, ">Revoked<") {
		t.Fatalf("host page after revoke:\n%s", p.body)
	}
}

func TestViewerAndTenantScope(t *testing.T) {
	cptest.ForEachStore(t, testViewerAndTenantScope)
}

func testViewerAndTenantScope(t *testing.T, opts cptest.Options) {
	cp := cptest.Start(t, opts)
	tenant := tenantOf(t, cp)
	id := addHosts(t, cp, tenant, "web", 1)[0]
	other, err := cp.AdminClient().CreateTenant(context.Background(), connect.NewRequest(&edgev1.CreateTenantRequest{Name: "other", Kind: "team"}))
	if err != nil {
		t.Fatal(err)
	}
	otherID := addHosts(t, cp, other.Msg.GetTenant().GetId(), "db", 1)[0]

	viewer := newBrowser(t, cp)
	viewer.signIn(apiToken(t, cp, tenant, "viewer"))
	page := viewer.get("/ui/hosts/" + id)
	if page.StatusCode != http.StatusOK || strings.Contains(page.body, "/revoke") || strings.Contains(page.body, "Update tags") {
		t.Fatalf("viewer's host page offers changes:\n%s", page.body)
	}
	csrf := viewer.csrf()
	a := viewer.do("POST", "/ui/hosts/"+id+"/revoke", url.Values{"csrf": {csrf}, "confirm": {id}}, nil)
	mustStatus(t, a, http.StatusForbidden, console.ReasonPermission)
	if !strings.Contains(a.body, "a viewer API token may not call RevokeHost") {
		t.Fatalf("viewer's forged revoke: the API's reason is missing:\n%s", a.body)
	}
	mustStatus(t, viewer.do("POST", "/ui/hosts/"+id+"/tags", url.Values{"csrf": {csrf}, "add": {"x"}}, nil), http.StatusForbidden, console.ReasonPermission)
	if d, _ := cp.Store.GetDaemon(context.Background(), id); d.Status != store.DaemonActive || len(d.Tags) != 0 {
		t.Fatalf("a viewer changed the host: %+v", d)
	}

	op := newBrowser(t, cp)
	op.signIn(apiToken(t, cp, tenant, "operator"))
	ocsrf := op.csrf()
	for _, a := range []answer{
		op.get("/ui/hosts/" + otherID),
		op.get("/ui/hosts/" + otherID + "/revoke"),
		op.do("POST", "/ui/hosts/"+otherID+"/revoke", url.Values{"csrf": {ocsrf}, "confirm": {otherID}}, nil),
		op.do("POST", "/ui/hosts/"+otherID+"/tags", url.Values{"csrf": {ocsrf}, "add": {"x"}}, nil),
	} {
		mustStatus(t, a, http.StatusNotFound, console.ReasonNotFound)
	}
	if l := op.get("/ui/hosts"); strings.Contains(l.body, otherID) || !strings.Contains(l.body, id) {
		t.Fatal("the operator's host list is not its tenant's")
	}
	// Fleet runs: a viewer may not cancel one; another tenant's (or no) run is not found.
	mustStatus(t, viewer.do("POST", "/ui/fleet/fr-0000000000000000/cancel", url.Values{"csrf": {csrf}}, nil), http.StatusForbidden, console.ReasonPermission)
	mustStatus(t, op.do("POST", "/ui/fleet/fr-0000000000000000/cancel", url.Values{"csrf": {ocsrf}}, nil), http.StatusNotFound, console.ReasonNotFound)
	mustStatus(t, op.get("/ui/fleet/fr-0000000000000000"), http.StatusNotFound, console.ReasonNotFound)

	// Tags: an operator may; a bad tag is refused with the API's reason, changing nothing.
	mustStatus(t, op.do("POST", "/ui/hosts/"+id+"/tags", url.Values{"csrf": {ocsrf}, "add": {"bad tag"}}, nil), http.StatusBadRequest, console.ReasonInvalid)
	if a := op.do("POST", "/ui/hosts/"+id+"/tags", url.Values{"csrf": {ocsrf}, "add": {"prod, web"}}, nil); a.StatusCode != http.StatusSeeOther {
		t.Fatalf("tags: %d\n%s", a.StatusCode, a.body)
	}
	if d, _ := cp.Store.GetDaemon(context.Background(), id); strings.Join(d.Tags, ",") != "prod,web" {
		t.Fatalf("tags after update: %v", d.Tags)
	}
	// The audit page: entries of the tenant; verification needs an admin.
	if a := op.get("/ui/audit?action=update_tags"); !strings.Contains(a.body, "update_tags") || !strings.Contains(a.body, "takes an admin token") {
		t.Fatalf("operator's audit page:\n%s", a.body)
	}
	admin := newBrowser(t, cp)
	admin.signIn(cp.AdminToken)
	if a := admin.get("/ui/audit"); !strings.Contains(a.body, `data-ok="true"`) {
		t.Fatalf("admin's audit page has no verified chain:\n%s", a.body)
	}
}

func TestBadSelectorShowsColumn(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	b := newBrowser(t, cp)
	b.signIn(cp.AdminToken)
	a := b.get("/ui/hosts?target=" + url.QueryEscape("tags=AnyOf(prod"))
	mustStatus(t, a, http.StatusBadRequest, console.ReasonInvalid)
	if !strings.Contains(a.body, "at column") || !regexp.MustCompile(`id="caret"> +\^<`).MatchString(a.body) {
		t.Fatalf("bad selector page:\n%s", a.body)
	}
}

var rowRE = regexp.MustCompile(`<tr data-node="(n-[^"]+)">`)
var nextRE = regexp.MustCompile(`<a href="([^"]+)" id="next-page"`)

// TestPagingTenThousandHosts pages through 10,000 hosts in the console and the API:
// every host once, in order, with counts over all of them.
func TestPagingTenThousandHosts(t *testing.T) {
	cptest.ForEachStore(t, testPagingTenThousandHosts)
}

func testPagingTenThousandHosts(t *testing.T, opts cptest.Options) {
	cp := cptest.Start(t, opts)
	tenant := tenantOf(t, cp)
	addHosts(t, cp, tenant, "web", 10000, "prod")
	addHosts(t, cp, tenant, "db", 10)
	b := newBrowser(t, cp)
	b.signIn(cp.AdminToken)

	seen := map[string]bool{}
	path, pages := "/ui/hosts?size=500&target="+url.QueryEscape("tags=AnyOf(prod)"), 0
	var last string
	for path != "" {
		a := b.get(strings.ReplaceAll(path, "&amp;", "&"))
		if a.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d\n%s", path, a.StatusCode, a.body)
		}
		pages++
		if !strings.Contains(a.body, `<span id="count-total">10000</span>`) {
			t.Fatalf("page %d lacks the total over every page", pages)
		}
		for _, m := range rowRE.FindAllStringSubmatch(a.body, -1) {
			if seen[m[1]] || m[1] <= last {
				t.Fatalf("host %s out of order or twice (after %s)", m[1], last)
			}
			seen[m[1]], last = true, m[1]
		}
		path = ""
		if m := nextRE.FindStringSubmatch(a.body); m != nil {
			path = m[1]
		}
	}
	if len(seen) != 10000 || pages != 20 {
		t.Fatalf("saw %d hosts on %d pages, want 10000 on 20", len(seen), pages)
	}

	// The API: paged, and whole for a client from before paging.
	api := cp.AdminClient()
	ctx := context.Background()
	resp, err := api.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.Msg.GetHosts()); n != 1000 || resp.Msg.GetNextPageToken() == "" || resp.Msg.GetTotalCount() != 10010 || resp.Msg.GetCounts().GetDisconnected() != 10010 {
		t.Fatalf("first page: %d hosts, next %q, total %d, counts %v", n, resp.Msg.GetNextPageToken(), resp.Msg.GetTotalCount(), resp.Msg.GetCounts())
	}
	if resp.Msg.GetHosts()[0].GetName() != "db-00000" {
		t.Fatalf("first host %s, want db-00000 (by name)", resp.Msg.GetHosts()[0].GetName())
	}
	all, err := api.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{}))
	if err != nil || len(all.Msg.GetHosts()) != 10010 || all.Msg.GetNextPageToken() != "" {
		t.Fatalf("unpaged: %v, %d hosts", err, len(all.Msg.GetHosts()))
	}
	// Hosts of one name page by node id: one a page, each once.
	err = cp.Store.InTx(ctx, func(tx store.Tx) error {
		for _, id := range []string{"n-dup3", "n-dup1", "n-dup2"} {
			if err := tx.InsertDaemon(ctx, store.Daemon{NodeID: id, TenantID: tenant, DisplayName: "dup", PublicKey: pubkey(id), Status: store.DaemonActive}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for token := ""; ; {
		r, err := api.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{Target: "name=dup", PageSize: 1, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range r.Msg.GetHosts() {
			got = append(got, h.GetNodeId())
		}
		if token = r.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if strings.Join(got, " ") != "n-dup1 n-dup2 n-dup3" {
		t.Fatalf("hosts named dup, one a page: %v", got)
	}
	if _, err := api.ListHosts(ctx, connect.NewRequest(&edgev1.ListHostsRequest{PageSize: 10, PageToken: "%%%"})); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "start again from the first page") {
		t.Fatalf("forged page token: %v", err)
	}
}

// TestLiveHostEvents: the hosts stream sends the page, then the page again when a
// host changes.
func TestLiveHostEvents(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	tenant := tenantOf(t, cp)
	id := addHosts(t, cp, tenant, "web", 3)[1]
	b := newBrowser(t, cp)
	b.signIn(cp.AdminToken)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", cp.URL+"/ui/events/hosts", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := readEvents(resp.Body)
	first := <-events
	var list struct {
		Total int `json:"total"`
		Hosts []struct {
			NodeID string   `json:"node_id"`
			Tags   []string `json:"tags"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(first), &list); err != nil || list.Total != 3 || len(list.Hosts) != 3 {
		t.Fatalf("first event %q: %v", first, err)
	}
	if _, err := cp.AdminClient().UpdateHostTags(ctx, connect.NewRequest(&edgev1.UpdateHostTagsRequest{NodeId: id, Add: []string{"canary"}})); err != nil {
		t.Fatal(err)
	}
	for data := range events {
		if strings.Contains(data, `"tags":["canary"]`) {
			return
		}
	}
	t.Fatal("the stream ended without the tag change")
}

// readEvents sends the data of each "hosts" event.
func readEvents(r io.Reader) <-chan string {
	out := make(chan string)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		var name string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && name == "hosts":
				out <- strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return out
}

// BenchmarkHostsPage is one hosts page (50 rows, the console's default) of a
// tenant with 100 and with 10,000 hosts: the cost of a page load and of each tick
// of a live page.
func BenchmarkHostsPage(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			cp := cptest.Start(b, cptest.Options{})
			addHosts(b, cp, tenantOf(b, cp), "web", n, "prod")
			br := newBrowser(b, cp)
			br.signIn(cp.AdminToken)
			b.ResetTimer()
			for b.Loop() {
				if a := br.get("/ui/hosts?target=" + url.QueryEscape("tags=AnyOf(prod)")); a.StatusCode != http.StatusOK {
					b.Fatalf("%d", a.StatusCode)
				}
			}
		})
	}
}

var auditRowRE = regexp.MustCompile(`<tr><td>([0-9]+)</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>`)

// TestAuditNewestFirst: the audit page shows a tenant's newest entries first, across
// windows of the global chain, filtered by action, never another tenant's.
func TestAuditNewestFirst(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	ctx := context.Background()
	tenant := tenantOf(t, cp)
	other, err := cp.AdminClient().CreateTenant(ctx, connect.NewRequest(&edgev1.CreateTenantRequest{Name: "other", Kind: "team"}))
	if err != nil {
		t.Fatal(err)
	}
	opToken := apiToken(t, cp, tenant, "operator")
	var newestMine int64
	err = cp.Store.InTx(ctx, func(tx store.Tx) error {
		for i := range 2500 {
			tn, action := tenant, "bulk.mine"
			if i%3 == 0 {
				tn, action = other.Msg.GetTenant().GetId(), "bulk.other"
			}
			e, err := tx.AppendAudit(ctx, store.AuditEntry{At: time.Now().UTC(), TenantID: tn, Actor: "system", Action: action, Result: "ok"})
			if err != nil {
				return err
			}
			if tn == tenant {
				newestMine = e.ID
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	op := newBrowser(t, cp)
	op.signIn(opToken)
	a := op.get("/ui/audit")
	rows := auditRowRE.FindAllStringSubmatch(a.body, -1)
	if len(rows) != 500 || rows[0][1] != strconv.FormatInt(newestMine, 10) {
		t.Fatalf("audit page: %d rows, first %v, want 500 from id %d", len(rows), rows[0], newestMine)
	}
	prev := int64(1 << 62)
	for _, r := range rows {
		id, _ := strconv.ParseInt(r[1], 10, 64)
		if id >= prev || r[2] != tenant {
			t.Fatalf("row %v after id %d: not newest first, or not the operator's tenant", r, prev)
		}
		prev = id
	}
	// A filter on the action finds the token's minting, older than every bulk entry.
	if rows := auditRowRE.FindAllStringSubmatch(op.get("/ui/audit?action=api_token").body, -1); len(rows) != 1 || rows[0][4] != "api_token.create" {
		t.Fatalf("api_token entries: %v", rows)
	}
	if rows := auditRowRE.FindAllStringSubmatch(op.get("/ui/audit?action=bulk.other").body, -1); len(rows) != 0 {
		t.Fatalf("another tenant's entries: %v", rows)
	}
}

// syncBuffer is a log sink tests may read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestShutdownEndsLiveStreams: an open live page does not hold the server's
// graceful shutdown (which would end in a forced close, logged as an error).
func TestShutdownEndsLiveStreams(t *testing.T) {
	var logs syncBuffer
	cp := cptest.Start(t, cptest.Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	addHosts(t, cp, tenantOf(t, cp), "web", 1)
	b := newBrowser(t, cp)
	b.signIn(cp.AdminToken)
	req, _ := http.NewRequest("GET", cp.URL+"/ui/events/hosts", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := readEvents(resp.Body)
	<-events
	cp.Stop()
	for range events {
	}
	if l := logs.String(); strings.Contains(l, "stopped with an error") || strings.Contains(l, "http shutdown") {
		t.Fatalf("shutdown with a live page open:\n%s", l)
	}
}

// The host list and a host's page say when its key is due under the rotation
// policies that select it, and say "overdue" in words once it is past.
func TestKeyDueAndOverdue(t *testing.T) {
	clk := &clock{t: time.Now()}
	cp := cptest.Start(t, cptest.Options{Now: clk.Now})
	tenant := tenantOf(t, cp)
	ids := addHosts(t, cp, tenant, "web", 1, "prod")
	addHosts(t, cp, tenant, "db", 1)
	if _, err := cp.AdminClient().SetRotationPolicy(context.Background(), connect.NewRequest(&edgev1.SetRotationPolicyRequest{
		Name: "prod-hourly", Target: "tags=AnyOf(prod)", MaxKeyAge: durationpb.New(time.Hour),
	})); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, cp)
	b.signIn(cp.AdminToken)
	row := func(body, node string) string {
		i := strings.Index(body, `<tr data-node="`+node+`">`)
		if i < 0 {
			t.Fatalf("no row for %s:\n%s", node, body)
		}
		j := strings.Index(body[i:], "</tr>")
		return body[i : i+j]
	}
	page := b.get("/ui/hosts")
	web, db := row(page.body, ids[0]), row(page.body, "n-db00000")
	if strings.Contains(web, "overdue") || !regexp.MustCompile(`<td>\d{4}-\d\d-\d\dT[^<]*Z</td>`).MatchString(web) {
		t.Fatalf("a host due in an hour: row\n%s", web)
	}
	if !strings.Contains(db, "<td>-</td>") || strings.Contains(db, "overdue") {
		t.Fatalf("a host no policy selects: row\n%s", db)
	}
	clk.Add(2 * time.Hour)
	page = b.get("/ui/hosts")
	if web := row(page.body, ids[0]); !strings.Contains(web, "overdue since") {
		t.Fatalf("a host two hours past its due time: row\n%s", web)
	}
	if host := b.get("/ui/hosts/" + ids[0]); !regexp.MustCompile(`id="key-due">overdue since `).MatchString(host.body) {
		t.Fatalf("host page lacks the overdue key:\n%s", host.body)
	}
}
