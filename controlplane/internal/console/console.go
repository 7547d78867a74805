// Package console owns the operators' web console under /ui/: sign-in with an API
// token into a server-side session (HttpOnly, Secure, SameSite=Strict cookie),
// CSRF and cross-origin checks on every change, a strict Content-Security-Policy
// (no inline script), and the pages: hosts (paged, filtered by selector, live over
// server-sent events), a host with its rotations and audit entries, revoke and
// tags; fleet runs followed live; the audit trail with its chain verification.
//
// The console holds no rules of its own: every page calls the EdgeAdminService
// handler in process with the session's API token, so tenant scoping and roles
// (rpc.AdminPermissions) are exactly the API's. Its assets are embedded.
package console

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Defaults.
const (
	DefaultSessionTTL   = 8 * time.Hour
	DefaultPollInterval = 2 * time.Second
	// DefaultPageSize is how many hosts a hosts page shows.
	DefaultPageSize = 50
)

// ContentSecurityPolicy is sent with every console response: scripts, styles and
// images only from the console itself, no inline script or style, no framing, forms
// and connections back to the console only.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Config wires a Console.
type Config struct {
	// API is the EdgeAdminService handler, with its interceptors.
	API http.Handler
	// Now is the clock of sessions and key ages; nil means time.Now.
	Now func() time.Time
	// Rand feeds session ids and CSRF tokens; nil means crypto/rand.
	Rand io.Reader
	// SessionTTL is how long a sign-in lasts; 0 means DefaultSessionTTL.
	SessionTTL time.Duration
	// PollInterval is how often a live page looks for changes; 0 means
	// DefaultPollInterval (well within the daemons' heartbeat interval).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Console is the /ui/ handler.
type Console struct {
	cfg      Config
	api      edgev1connect.EdgeAdminServiceClient
	sessions sessions
	pages    map[string]*template.Template
	handler  http.Handler
	// closing ends the live streams when the server shuts down.
	closing context.Context
	close   context.CancelFunc
	once    sync.Once
}

// New returns the console.
func New(cfg Config) (*Console, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.API == nil {
		return nil, errors.New("console: no API handler")
	}
	c := &Console{
		cfg:      cfg,
		api:      edgev1connect.NewEdgeAdminServiceClient(&http.Client{Transport: inProcess{cfg.API}}, "http://console.invalid"),
		sessions: sessions{byID: map[string]*session{}},
	}
	c.closing, c.close = context.WithCancel(context.Background())
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	static, _ := fs.Sub(staticFS, "static")
	m := http.NewServeMux()
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", staticHandler(http.FileServerFS(static))))
	m.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/hosts", http.StatusSeeOther)
	})
	m.HandleFunc("GET /ui/login", c.loginPage)
	m.HandleFunc("POST /ui/login", c.login)
	m.HandleFunc("POST /ui/logout", c.authed(c.logout))
	m.HandleFunc("GET /ui/hosts", c.authed(c.hostsPage))
	m.HandleFunc("GET /ui/hosts/{node}", c.authed(c.hostPage))
	m.HandleFunc("GET /ui/hosts/{node}/revoke", c.authed(c.revokeConfirmPage))
	m.HandleFunc("POST /ui/hosts/{node}/revoke", c.authed(c.revoke))
	m.HandleFunc("POST /ui/hosts/{node}/tags", c.authed(c.updateTags))
	m.HandleFunc("GET /ui/fleet", c.authed(c.fleetPage))
	m.HandleFunc("GET /ui/fleet/{run}", c.authed(c.runPage))
	m.HandleFunc("POST /ui/fleet/{run}/cancel", c.authed(c.cancelRun))
	m.HandleFunc("GET /ui/audit", c.authed(c.auditPage))
	m.HandleFunc("GET /ui/events/hosts", c.authed(c.hostEvents))
	m.HandleFunc("GET /ui/events/fleet/{run}", c.authed(c.runEvents))

	// Cross-origin unsafe requests (Sec-Fetch-Site or Origin not this origin) are
	// refused before anything runs, sign-in included; the session's CSRF token is
	// checked on top for every change (authed).
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.cfg.Logger.Info("console: refused a cross-origin request", "method", r.Method, "path", r.URL.Path, "reason", ReasonCrossOrigin)
		c.refuse(w, r, nil, http.StatusForbidden, ReasonCrossOrigin,
			"this change came from another site; the console accepts changes only from its own pages: open the console and try again there")
	}))
	c.handler = securityHeaders(cop.Handler(m))
	return c, nil
}

// Refusal reasons, shown on the refusal page and in the X-Aegis-Refused header.
const (
	ReasonCrossOrigin   = "cross_origin"
	ReasonCSRF          = "csrf_token"
	ReasonSignedOut     = "signed_out"
	ReasonPermission    = "permission_denied"
	ReasonNotFound      = "not_found"
	ReasonInvalid       = "invalid"
	ReasonUnavailable   = "unavailable"
	ReasonUnauthorized  = "bad_token"
	ReasonNotConfirmed  = "not_confirmed"
	ReasonInternalError = "internal"
)

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.handler.ServeHTTP(w, r) }

// Close ends every live stream (call it when the server shuts down, so a browser's
// open page does not hold the shutdown).
func (c *Console) Close() { c.once.Do(c.close) }

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Strict-Transport-Security", "max-age=31536000")
		if h.Get("Cache-Control") == "" {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

func staticHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		next.ServeHTTP(w, r)
	})
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, s *session)

// authed resolves the session; without one a page redirects to sign-in and
// anything else is refused. Every change must carry the session's CSRF token.
func (c *Console) authed(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.sessions.lookup(r, c.cfg.Now())
		if s == nil {
			if r.Method == http.MethodGet && r.Header.Get("Accept") != "text/event-stream" {
				http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
				return
			}
			c.refuse(w, r, nil, http.StatusUnauthorized, ReasonSignedOut, "you are not signed in (or the session expired): sign in again")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if !s.checkCSRF(r) {
				c.cfg.Logger.Info("console: refused a change without its CSRF token", "path", r.URL.Path, "operator", s.tokenID, "reason", ReasonCSRF)
				c.refuse(w, r, s, http.StatusForbidden, ReasonCSRF,
					"this change did not carry the page's CSRF token; reload the page and try again from it")
				return
			}
		}
		h(w, r, s)
	}
}

// bearer is an API request carrying the session's API token.
func bearer[T any](s *session, m *T) *connect.Request[T] {
	req := connect.NewRequest(m)
	req.Header().Set("Authorization", "Bearer "+s.token)
	return req
}

// apiError answers a failed API call: its code decides the page, its message
// (the API's own, free of secrets) says why.
func (c *Console) apiError(w http.ResponseWriter, r *http.Request, s *session, err error) {
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated:
		// The token was revoked since sign-in: the session goes with it.
		c.sessions.dropToken(s.tokenID)
		clearSessionCookie(w)
		c.refuse(w, r, nil, http.StatusUnauthorized, ReasonUnauthorized, "the API token of this session is no longer valid ("+msg+"): sign in again")
	case connect.CodePermissionDenied:
		c.refuse(w, r, s, http.StatusForbidden, ReasonPermission, msg)
	case connect.CodeNotFound:
		c.refuse(w, r, s, http.StatusNotFound, ReasonNotFound, msg)
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeAlreadyExists:
		c.refuse(w, r, s, http.StatusBadRequest, ReasonInvalid, msg)
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
		c.refuse(w, r, s, http.StatusServiceUnavailable, ReasonUnavailable, msg+": retry in a moment")
	case connect.CodeCanceled:
		// The browser left.
	default:
		c.cfg.Logger.Warn("console: API call failed", "path", r.URL.Path, "code", connect.CodeOf(err).String())
		c.refuse(w, r, s, http.StatusInternalServerError, ReasonInternalError, "internal error (logged on the control plane): retry, and if it persists read the control plane's log")
	}
}

type refusalView struct {
	Status  int
	Reason  string
	Message string
}

// refuse answers with the refusal page (or its text for a script), naming the reason.
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, s *session, status int, reason, msg string) {
	w.Header().Set("X-Aegis-Refused", reason)
	if r.Header.Get("Accept") == "text/event-stream" || r.Header.Get("X-CSRF-Token") != "" {
		http.Error(w, reason+": "+msg, status)
		return
	}
	c.render(w, r, s, status, "refused", refusalView{Status: status, Reason: reason, Message: msg})
}

// headerView is what every page's layout shows.
type headerView struct {
	Signed   bool
	Role     string
	Tenant   string
	CSRF     string
	CanWrite bool
	IsAdmin  bool
	Nav      string
}

type pageData struct {
	Header headerView
	Title  string
	Body   any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, s *session, status int, page string, body any) {
	t := c.pages[page]
	d := pageData{Body: body, Title: titles[page]}
	if s != nil {
		d.Header = headerView{Signed: true, Role: s.role, Tenant: s.tenant, CSRF: s.csrf,
			CanWrite: s.role == "admin" || s.role == "operator", IsAdmin: s.role == "admin", Nav: page}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := t.ExecuteTemplate(w, "layout", d); err != nil {
		c.cfg.Logger.Warn("console: render", "page", page, "err", err)
	}
}

var titles = map[string]string{
	"login": "Sign in", "hosts": "Edge hosts", "host": "Edge host", "revoke": "Revoke host",
	"fleet": "Fleet runs", "run": "Fleet run", "audit": "Audit trail", "refused": "Refused",
}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{"join": joinTags, "ts": formatTime, "details": details,
		"caret": func(col int) string { return strings.Repeat(" ", max(col-1, 0)) + "^" }}
	out := map[string]*template.Template{}
	for page := range titles {
		t, err := template.New(page).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, err
		}
		out[page] = t
	}
	return out, nil
}

// The WhoAmI answer of a sign-in.
func (c *Console) whoAmI(ctx context.Context, token string) (*edgev1.WhoAmIResponse, error) {
	req := connect.NewRequest(&edgev1.WhoAmIRequest{})
	req.Header().Set("Authorization", "Bearer "+token)
	resp, err := c.api.WhoAmI(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}
