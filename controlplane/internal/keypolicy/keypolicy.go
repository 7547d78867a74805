// Package keypolicy owns routine rotation on the control plane: tenant-scoped
// rotation policies (a target selector and a maximum key age), each change audited in
// its transaction, the policy maximum of a host (the smallest max age among the
// policies that select it; the daemon then takes the smaller of that and its own
// rotation.max_key_age, keyage.Effective), a host's key age, due time and overdue
// mark under the same effective maximum (the host's own maximum reaches the control
// plane in its Hello), and telling connected daemons when their policy maximum
// changes.
package keypolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/selector"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// ErrInvalid wraps refusals of malformed requests; nothing was changed.
var ErrInvalid = errors.New("invalid request")

// Audit actions.
const (
	ActionSet    = "rotation_policy_set"
	ActionDelete = "rotation_policy_delete"
)

// nameRule: a policy's name is what operators type; the same shape as a context name.
var nameRule = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Policy is a stored policy and how many of its tenant's hosts it selects now.
type Policy struct {
	store.RotationPolicy
	HostsSelected int
}

// Notifier tells nodeID's live stream its policy maximum is now max (0: none). It
// reports whether a stream on this replica took it.
type Notifier func(nodeID string, max time.Duration) bool

// Config wires a Service.
type Config struct {
	Store  store.Store
	Now    func() time.Time
	Logger *slog.Logger
	// Notify, if set, reaches connected daemons after a change.
	Notify Notifier
}

// Service sets, lists and deletes policies and answers a host's policy maximum.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg}
}

// SelectorHost is what a selector sees of d at now (key_age included).
func SelectorHost(d store.Daemon, now time.Time) selector.Host {
	h := selector.Host{NodeID: d.NodeID, Name: d.DisplayName, Tags: d.Tags, OS: d.OS}
	if since := d.KeySince(); !since.IsZero() {
		h.KeyAge = now.Sub(since)
	}
	return h
}

// Max is the smallest max age among ps that select h (0 when none does). A stored
// target that no longer parses selects nothing.
func Max(ps []store.RotationPolicy, h selector.Host) time.Duration {
	var maxes []time.Duration
	for _, p := range ps {
		sel, err := parsed(p.Target)
		if err != nil || !sel.Matches(h) {
			continue
		}
		maxes = append(maxes, p.MaxKeyAge)
	}
	return keyage.Effective(maxes...)
}

// parsedTargets caches parsed policy targets: Max runs for every host of a listing
// or a scrape, and a tenant has a handful of policies. Bounded: cleared when full.
var parsedTargets struct {
	sync.Mutex
	m map[string]parseResult
}

type parseResult struct {
	sel selector.Selector
	err error
}

const maxParsedTargets = 1024

func parsed(target string) (selector.Selector, error) {
	parsedTargets.Lock()
	defer parsedTargets.Unlock()
	if r, ok := parsedTargets.m[target]; ok {
		return r.sel, r.err
	}
	if parsedTargets.m == nil || len(parsedTargets.m) >= maxParsedTargets {
		parsedTargets.m = map[string]parseResult{}
	}
	sel, err := selector.Parse(target)
	parsedTargets.m[target] = parseResult{sel, err}
	return sel, err
}

// KeyStatus is a host's key against its effective maximum.
type KeyStatus struct {
	Age time.Duration
	// Max is the smallest of the policies that select the host and of the host's own
	// rotation.max_key_age (as its latest Hello reported it); 0: neither sets one.
	Max     time.Duration
	DueAt   time.Time // zero when Max is 0
	Overdue bool
}

// StatusOf is d's key status under ps (its tenant's policies) and its own local
// maximum at now: the same effective maximum the daemon schedules by. A revoked host
// is never overdue: it holds no identity to rotate.
func StatusOf(d store.Daemon, ps []store.RotationPolicy, now time.Time) KeyStatus {
	h := SelectorHost(d, now)
	ks := KeyStatus{Age: h.KeyAge}
	if d.Status == store.DaemonRevoked {
		return ks
	}
	ks.Max = keyage.Effective(Max(ps, h), d.LocalMaxKeyAge)
	ks.DueAt = keyage.DueAt(d.KeySince(), ks.Max)
	ks.Overdue = !ks.DueAt.IsZero() && now.After(ks.DueAt)
	return ks
}

// ByTenant groups ps by tenant.
func ByTenant(ps []store.RotationPolicy) map[string][]store.RotationPolicy {
	m := map[string][]store.RotationPolicy{}
	for _, p := range ps {
		m[p.TenantID] = append(m[p.TenantID], p)
	}
	return m
}

// NodeMax is the policy maximum of one node, for the Welcome of its stream.
func (s *Service) NodeMax(ctx context.Context, nodeID string) (time.Duration, error) {
	d, err := s.cfg.Store.GetDaemon(ctx, nodeID)
	if err != nil {
		return 0, fmt.Errorf("node %q: %w", nodeID, err)
	}
	ps, err := s.cfg.Store.ListRotationPolicies(ctx, d.TenantID)
	if err != nil {
		return 0, err
	}
	return Max(ps, SelectorHost(d, s.cfg.Now())), nil
}

// Set creates or replaces the policy name in p's tenant. maxAge is checked by
// keyage.Check; warnings say what the operator should know (a max age below 1h).
func (s *Service) Set(ctx context.Context, p apitoken.Principal, name, target string, maxAge time.Duration) (pol Policy, replaced bool, warnings []string, err error) {
	if !p.CanWrite() {
		return Policy{}, false, nil, fmt.Errorf("%w: role %q cannot change rotation policies (operators and admins can)", apitoken.ErrPermissionDenied, p.Role)
	}
	if !nameRule.MatchString(name) {
		return Policy{}, false, nil, fmt.Errorf("%w: policy name %q: a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, name)
	}
	text := strings.TrimSpace(target)
	if text == "" {
		return Policy{}, false, nil, fmt.Errorf("%w: a target is required (say all, or e.g. tags=AnyOf(prod))", ErrInvalid)
	}
	sel, err := selector.Parse(text)
	if err != nil {
		return Policy{}, false, nil, fmt.Errorf("%w: target %v", ErrInvalid, err)
	}
	if strings.Contains(sel.String(), "key_age>") {
		return Policy{}, false, nil, fmt.Errorf("%w: target %q: a rotation policy cannot select by key_age (the policy is what sets the key age)", ErrInvalid, sel.String())
	}
	w, err := keyage.Check(maxAge)
	if err != nil {
		return Policy{}, false, nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if w != "" {
		warnings = append(warnings, w)
	}
	before := s.policies(ctx, p.TenantID)
	now := s.cfg.Now().UTC()
	rec := store.RotationPolicy{TenantID: p.TenantID, Name: name, Target: sel.String(), MaxKeyAge: maxAge,
		CreatedAt: now, UpdatedAt: now, UpdatedBy: "op:" + p.TokenID}
	err = s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		old, err := tx.GetRotationPolicy(ctx, p.TenantID, name)
		switch {
		case err == nil:
			replaced = true
			rec.CreatedAt = old.CreatedAt
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		if err := tx.PutRotationPolicy(ctx, rec); err != nil {
			return err
		}
		details := map[string]string{"policy": name, "target": rec.Target, "max_key_age": keyage.Format(maxAge), "replaced": strconv.FormatBool(replaced)}
		if replaced {
			details["previous_target"] = old.Target
			details["previous_max_key_age"] = keyage.Format(old.MaxKeyAge)
		}
		_, err = tx.AppendAudit(ctx, store.AuditEntry{At: now, TenantID: p.TenantID, Actor: rec.UpdatedBy, Action: ActionSet, Result: "ok", Details: details})
		return err
	})
	if err != nil {
		return Policy{}, false, nil, fmt.Errorf("set rotation policy %q: %w", name, err)
	}
	ds := s.tell(ctx, p.TenantID, before)
	return Policy{RotationPolicy: rec, HostsSelected: selects(rec, ds, s.cfg.Now())}, replaced, warnings, nil
}

// List returns the policies p can see (every tenant's for an admin).
func (s *Service) List(ctx context.Context, p apitoken.Principal) ([]Policy, error) {
	ps, err := s.cfg.Store.ListRotationPolicies(ctx, p.Scope())
	if err != nil {
		return nil, err
	}
	ds, err := s.cfg.Store.ListDaemons(ctx, store.DaemonFilter{TenantID: p.Scope()})
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	out := make([]Policy, 0, len(ps))
	for _, rp := range ps {
		out = append(out, Policy{RotationPolicy: rp, HostsSelected: selects(rp, ds, now)})
	}
	return out, nil
}

// selects counts the active hosts of rp's tenant among ds that rp selects.
func selects(rp store.RotationPolicy, ds []store.Daemon, now time.Time) int {
	sel, err := selector.Parse(rp.Target)
	if err != nil {
		return 0
	}
	n := 0
	for _, d := range ds {
		if d.TenantID == rp.TenantID && d.Status != store.DaemonRevoked && sel.Matches(SelectorHost(d, now)) {
			n++
		}
	}
	return n
}

// Delete removes the policy name from p's tenant; ErrNotFound if it has none.
func (s *Service) Delete(ctx context.Context, p apitoken.Principal, name string) (Policy, error) {
	if !p.CanWrite() {
		return Policy{}, fmt.Errorf("%w: role %q cannot change rotation policies (operators and admins can)", apitoken.ErrPermissionDenied, p.Role)
	}
	var old store.RotationPolicy
	before := s.policies(ctx, p.TenantID)
	now := s.cfg.Now().UTC()
	err := s.cfg.Store.InTx(ctx, func(tx store.Tx) error {
		var err error
		if old, err = tx.GetRotationPolicy(ctx, p.TenantID, name); err != nil {
			return err
		}
		if err := tx.DeleteRotationPolicy(ctx, p.TenantID, name); err != nil {
			return err
		}
		_, err = tx.AppendAudit(ctx, store.AuditEntry{At: now, TenantID: p.TenantID, Actor: "op:" + p.TokenID, Action: ActionDelete, Result: "ok",
			Details: map[string]string{"policy": name, "target": old.Target, "max_key_age": keyage.Format(old.MaxKeyAge)}})
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return Policy{}, fmt.Errorf("rotation policy %q: %w (see `aegis edge keys policy list`)", name, store.ErrNotFound)
	}
	if err != nil {
		return Policy{}, fmt.Errorf("delete rotation policy %q: %w", name, err)
	}
	s.tell(ctx, p.TenantID, before)
	return Policy{RotationPolicy: old}, nil
}

// policies reads a tenant's policies before a change, so tell can send only the
// hosts whose maximum it changed (nil on a failure: then every connected host is told).
func (s *Service) policies(ctx context.Context, tenantID string) []store.RotationPolicy {
	ps, err := s.cfg.Store.ListRotationPolicies(ctx, tenantID)
	if err != nil {
		return nil
	}
	return ps
}

// tell sends each connected host of tenantID whose policy maximum differs from what
// the policies before gave it its new maximum (streams on this replica take it at
// once; a stream on another replica learns it in its next Welcome), and returns the
// tenant's hosts. The change is committed already: a failure here is logged, never
// returned.
func (s *Service) tell(ctx context.Context, tenantID string, before []store.RotationPolicy) []store.Daemon {
	ps, err := s.cfg.Store.ListRotationPolicies(ctx, tenantID)
	if err != nil {
		s.cfg.Logger.WarnContext(ctx, "rotation policy: tell connected hosts", "err", err)
		return nil
	}
	ds, err := s.cfg.Store.ListDaemons(ctx, store.DaemonFilter{TenantID: tenantID})
	if err != nil {
		s.cfg.Logger.WarnContext(ctx, "rotation policy: tell connected hosts", "err", err)
		return nil
	}
	now := s.cfg.Now()
	for _, d := range ds {
		if d.Status == store.DaemonRevoked || d.SessionID == "" || s.cfg.Notify == nil {
			continue
		}
		h := SelectorHost(d, now)
		m := Max(ps, h)
		if before != nil && Max(before, h) == m {
			continue
		}
		s.cfg.Notify(d.NodeID, m)
	}
	return ds
}
