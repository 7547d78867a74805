// Package hosts owns the operator's view of enrolled hosts: tenant-scoped listing and
// lookup, the derived status (Revoked if revoked; Connected if a stream is open and
// the host was seen within three heartbeat intervals; else Disconnected), and the
// server's one say in a host's tool policy: which named security context it
// evaluates calls against (what the context allows is the host's local policy).
package hosts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/selector"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/tags"
)

// ErrInvalid wraps refusals of malformed requests.
var ErrInvalid = errors.New("invalid request")

// Status values.
type Status int

const (
	StatusDisconnected Status = iota + 1
	StatusConnected
	StatusRevoked
)

// Host is a daemon as operators see it.
type Host struct {
	Daemon   store.Daemon
	Tenant   store.Tenant
	Status   Status
	LastSeen time.Time
	// TokenExpiresAt is when the host's newest active token expires; set by Get
	// only (zero when it holds none).
	TokenExpiresAt time.Time
	// Key is the key's age against the rotation policies (List and Get).
	Key keypolicy.KeyStatus
}

// Config wires a Service.
type Config struct {
	Store             store.Store
	Now               func() time.Time
	HeartbeatInterval time.Duration
	// Latest, if set, gives this replica's newest in-memory last-seen time of a node,
	// fresher than the batched column.
	Latest func(nodeID string) time.Time
	// Sessions reaches the host's live stream, on this replica or another, to ask
	// for a token refresh; nil means never.
	Sessions Sender
	Logger   *slog.Logger
}

// Sender queues a command for a node's live stream (a *session.Registry for this
// replica's streams only): session.ErrNoStream when it has none.
type Sender interface {
	Send(nodeID string, c session.Command) error
}

// Service answers host queries.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// List returns the hosts visible to p matching target (a selector; "" means all).
// The store query is tenant-scoped; the selector only narrows what p may see.
func (s *Service) List(ctx context.Context, p apitoken.Principal, target string) ([]Host, error) {
	sel := selector.Selector{}
	if t := strings.TrimSpace(target); t != "" {
		var err error
		if sel, err = selector.Parse(t); err != nil {
			return nil, fmt.Errorf("%w: target %v", ErrInvalid, err)
		}
	}
	ds, err := s.cfg.Store.ListDaemons(ctx, store.DaemonFilter{TenantID: p.Scope()})
	if err != nil {
		return nil, fmt.Errorf("list daemons: %w", err)
	}
	tenants, err := s.tenants(ctx)
	if err != nil {
		return nil, err
	}
	policies, err := s.cfg.Store.ListRotationPolicies(ctx, p.Scope())
	if err != nil {
		return nil, fmt.Errorf("list rotation policies: %w", err)
	}
	byTenant := keypolicy.ByTenant(policies)
	now := s.cfg.Now()
	out := make([]Host, 0, len(ds))
	for _, d := range ds {
		if !sel.Matches(keypolicy.SelectorHost(d, now)) {
			continue
		}
		h := s.host(d, tenants[d.TenantID], now)
		h.Key = keypolicy.StatusOf(d, byTenant[d.TenantID], now)
		out = append(out, h)
	}
	return out, nil
}

// Get returns one host; a host of a tenant p cannot see is store.ErrNotFound.
func (s *Service) Get(ctx context.Context, p apitoken.Principal, nodeID string) (Host, error) {
	d, err := s.cfg.Store.GetDaemon(ctx, nodeID)
	if err == nil && !p.Sees(d.TenantID) {
		err = store.ErrNotFound
	}
	if err != nil {
		return Host{}, fmt.Errorf("host %q: %w", nodeID, err)
	}
	t, err := s.cfg.Store.GetTenant(ctx, d.TenantID)
	if err != nil {
		return Host{}, fmt.Errorf("tenant of host: %w", err)
	}
	now := s.cfg.Now()
	h := s.host(d, t, now)
	policies, err := s.cfg.Store.ListRotationPolicies(ctx, d.TenantID)
	if err != nil {
		return Host{}, fmt.Errorf("rotation policies of host: %w", err)
	}
	h.Key = keypolicy.StatusOf(d, policies, now)
	toks, err := s.cfg.Store.ActiveNodeTokens(ctx, nodeID, now)
	if err != nil {
		return Host{}, fmt.Errorf("tokens of host: %w", err)
	}
	for _, tok := range toks {
		if tok.ExpiresAt.After(h.TokenExpiresAt) {
			h.TokenExpiresAt = tok.ExpiresAt
		}
	}
	return h, nil
}

func (s *Service) tenants(ctx context.Context) (map[string]store.Tenant, error) {
	ts, err := s.cfg.Store.ListTenants(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	m := make(map[string]store.Tenant, len(ts))
	for _, t := range ts {
		m[t.ID] = t
	}
	return m, nil
}

func (s *Service) host(d store.Daemon, t store.Tenant, now time.Time) Host {
	seen := d.LastSeenAt
	if s.cfg.Latest != nil {
		if l := s.cfg.Latest(d.NodeID); l.After(seen) {
			seen = l
		}
	}
	h := Host{Daemon: d, Tenant: t, LastSeen: seen, Status: StatusDisconnected}
	switch {
	case d.Status == store.DaemonRevoked:
		h.Status = StatusRevoked
	case d.SessionID != "" && !seen.IsZero() && now.Sub(seen) <= 3*s.cfg.HeartbeatInterval:
		h.Status = StatusConnected
	}
	return h
}

// contextName is what a security context may be called: the host's policy file
// names it, and it travels in every token and InvokeTool.
var contextName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// SetSecurityContext records which security context nodeID evaluates tool calls
// against and bumps its version, so the host's next token carries both (claims sctx
// and sctxv). With refresh, the host's live stream on this replica (if any) is told
// to re-attest now, so the change takes effect without waiting for the token's
// natural refresh; refreshSent says whether it was told. A host p cannot see is
// store.ErrNotFound; a bad name is ErrInvalid and changes nothing.
func (s *Service) SetSecurityContext(ctx context.Context, p apitoken.Principal, nodeID, name string, refresh bool) (h Host, refreshSent bool, err error) {
	if !p.CanWrite() {
		return Host{}, false, fmt.Errorf("%w: role %q cannot change a host's security context", apitoken.ErrPermissionDenied, p.Role)
	}
	if !contextName.MatchString(name) {
		return Host{}, false, fmt.Errorf("%w: security context %q: a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, name)
	}
	now := s.cfg.Now().UTC()
	var d store.Daemon
	err = s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		old, err := tx.GetDaemon(ctx, nodeID)
		if err == nil && !p.Sees(old.TenantID) {
			err = store.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("host %q: %w", nodeID, err)
		}
		if err := tx.SetDaemonSecurityContext(ctx, nodeID, name); err != nil {
			return err
		}
		if d, err = tx.GetDaemon(ctx, nodeID); err != nil {
			return err
		}
		_, err = tx.AppendAudit(ctx, store.AuditEntry{
			At: now, TenantID: d.TenantID, Actor: "op:" + p.TokenID, Action: "set_security_context", NodeID: nodeID, Result: "ok",
			Details: map[string]string{"from": old.SecurityContext, "to": name, "version": strconv.FormatInt(d.SecurityContextVersion, 10)},
		})
		return err
	})
	if err != nil {
		return Host{}, false, err
	}
	if refresh && s.cfg.Sessions != nil && d.Status != store.DaemonRevoked {
		err := s.cfg.Sessions.Send(nodeID, session.Command{Kind: session.CommandRefreshToken, Reason: "security context changed to " + name})
		refreshSent = err == nil
		if err != nil && !errors.Is(err, session.ErrNoStream) && s.cfg.Logger != nil {
			// The change is committed; the host picks it up at its next refresh.
			s.cfg.Logger.Warn("refresh after a security context change not sent", "node", nodeID, "err", err)
		}
	}
	t, err := s.cfg.Store.GetTenant(ctx, d.TenantID)
	if err != nil {
		return Host{}, false, fmt.Errorf("tenant of host: %w", err)
	}
	return s.host(d, t, s.cfg.Now()), refreshSent, nil
}

// MaxTags bounds a host's tags.
const MaxTags = tags.Max

// UpdateTags adds and then removes tags on nodeID (tags are what selectors select
// on). A bad tag or too many tags is ErrInvalid and changes nothing; a host p
// cannot see is store.ErrNotFound.
func (s *Service) UpdateTags(ctx context.Context, p apitoken.Principal, nodeID string, add, remove []string) (Host, error) {
	if !p.CanWrite() {
		return Host{}, fmt.Errorf("%w: role %q cannot change a host's tags", apitoken.ErrPermissionDenied, p.Role)
	}
	for _, t := range append(append([]string(nil), add...), remove...) {
		if !tags.Valid(t) {
			return Host{}, fmt.Errorf("%w: tag %q: %s", ErrInvalid, t, tags.Rule)
		}
	}
	var d store.Daemon
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		old, err := tx.GetDaemon(ctx, nodeID)
		if err == nil && !p.Sees(old.TenantID) {
			err = store.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("host %q: %w", nodeID, err)
		}
		next := slices.Clone(old.Tags)
		for _, t := range add {
			if !slices.Contains(next, t) {
				next = append(next, t)
			}
		}
		next = slices.DeleteFunc(next, func(t string) bool { return slices.Contains(remove, t) })
		if len(next) > MaxTags {
			return fmt.Errorf("%w: a host has at most %d next; this would give it %d", ErrInvalid, MaxTags, len(next))
		}
		if err := tx.UpdateDaemonTags(ctx, nodeID, next); err != nil {
			return err
		}
		d = old
		d.Tags = next
		_, err = tx.AppendAudit(ctx, store.AuditEntry{
			At: s.cfg.Now().UTC(), TenantID: d.TenantID, Actor: "op:" + p.TokenID, Action: "update_tags", NodeID: nodeID, Result: "ok",
			Details: map[string]string{"from": strings.Join(old.Tags, ","), "to": strings.Join(next, ",")},
		})
		return err
	})
	if err != nil {
		return Host{}, err
	}
	t, err := s.cfg.Store.GetTenant(ctx, d.TenantID)
	if err != nil {
		return Host{}, fmt.Errorf("tenant of host: %w", err)
	}
	return s.host(d, t, s.cfg.Now()), nil
}

// ErrStillValid: the host still holds a valid identity (Connected, or active and
// Disconnected), so deleting it from the list would hide a key that still works.
var ErrStillValid = errors.New("host still holds a valid identity")

// Delete removes a revoked (or logged-out) host from the control plane's list, with an
// audit entry, in one transaction. A host that is not revoked is ErrStillValid and
// nothing changes; a host p cannot see is store.ErrNotFound. The host's public key
// stays claimed (daemon_keys), so it can never enroll again.
func (s *Service) Delete(ctx context.Context, p apitoken.Principal, nodeID string) (Host, error) {
	if !p.CanWrite() {
		return Host{}, fmt.Errorf("%w: role %q cannot delete hosts", apitoken.ErrPermissionDenied, p.Role)
	}
	var h Host
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		d, err := tx.GetDaemon(ctx, nodeID)
		if err == nil && !p.Sees(d.TenantID) {
			err = store.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("host %q: %w", nodeID, err)
		}
		t, err := tx.GetTenant(ctx, d.TenantID)
		if err != nil {
			return fmt.Errorf("tenant of host: %w", err)
		}
		h = s.host(d, t, s.cfg.Now())
		if h.Status != StatusRevoked {
			state := "Disconnected but still enrolled"
			if h.Status == StatusConnected {
				state = "Connected"
			}
			return fmt.Errorf("%w: host %s is %s; revoke it first (revoke-remote, or logout on the host), then delete it", ErrStillValid, nodeID, state)
		}
		if err := tx.DeleteDaemon(ctx, nodeID); err != nil {
			return err
		}
		_, err = tx.AppendAudit(ctx, store.AuditEntry{
			At: s.cfg.Now().UTC(), TenantID: d.TenantID, Actor: "op:" + p.TokenID, Action: "delete_host", NodeID: nodeID, Result: "ok",
			Details: map[string]string{"name": d.DisplayName},
		})
		return err
	})
	if err != nil {
		return Host{}, err
	}
	return h, nil
}
