// Package hosts owns the operator's view of enrolled hosts: tenant-scoped listing and
// lookup, and the derived status (Revoked if revoked; Connected if a stream is open
// and the host was seen within three heartbeat intervals; else Disconnected).
package hosts

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
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
}

// Config wires a Service.
type Config struct {
	Store             store.Tx
	Now               func() time.Time
	HeartbeatInterval time.Duration
	// Latest, if set, gives this replica's newest in-memory last-seen time of a node,
	// fresher than the batched column.
	Latest func(nodeID string) time.Time
}

// Service answers host queries.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// List returns the hosts visible to p matching target ("" or "all").
func (s *Service) List(ctx context.Context, p apitoken.Principal, target string) ([]Host, error) {
	if t := strings.TrimSpace(target); t != "" && t != "all" {
		return nil, fmt.Errorf("%w: target selectors other than all arrive with fleet runs", ErrInvalid)
	}
	ds, err := s.cfg.Store.ListDaemons(ctx, store.DaemonFilter{TenantID: p.Scope()})
	if err != nil {
		return nil, fmt.Errorf("list daemons: %w", err)
	}
	tenants, err := s.tenants(ctx)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	out := make([]Host, 0, len(ds))
	for _, d := range ds {
		out = append(out, s.host(d, tenants[d.TenantID], now))
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
	return s.host(d, t, s.cfg.Now()), nil
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
