// Package challenge owns server nonces: random, single-use, 60-second challenges that
// a key signs at enrollment and attestation. Nonces live in the store, so any replica
// can consume a nonce another one issued; issuing is rate-limited per source address
// and per node.
package challenge

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/internal/ratelimit"
	"github.com/aegis-edge/aegis/controlplane/internal/rejection"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Lifetime of a nonce.
const Lifetime = 60 * time.Second

// Purposes a nonce is issued for; a nonce only works for its own purpose.
const (
	PurposeEnroll = "enroll"
	PurposeAttest = "attest"
)

// NodeIDPattern is the form of every node id ("n-" + 12 lowercase hex).
var NodeIDPattern = regexp.MustCompile(`^n-[0-9a-f]{12}$`)

// Config wires a Service.
type Config struct {
	Store store.Tx
	Now   func() time.Time
	Rand  io.Reader
	// PerSource and PerNode limit challenges; nil means unlimited.
	PerSource, PerNode *ratelimit.Limiter
	// BulkSources are the addresses (a bastion, an autoscaling group's NAT) allowed
	// the larger BulkPerSource limit instead of PerSource, so a bulk enrollment from
	// one place goes at the speed the server can sustain while every other source
	// keeps the tight limit (controlplane serve --bulk-enroll-sources).
	BulkSources   []netip.Prefix
	BulkPerSource *ratelimit.Limiter
}

// Service issues nonces.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// Issue makes a nonce for purpose. nodeID is required for attestation and must be
// empty for enrollment; source is the caller's address for rate limiting.
func (s *Service) Issue(ctx context.Context, purpose, nodeID, source string) (store.Nonce, error) {
	now := s.cfg.Now()
	switch purpose {
	case PurposeEnroll:
		if nodeID != "" {
			return store.Nonce{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "an enrollment challenge takes no node_id")
		}
	case PurposeAttest:
		if !NodeIDPattern.MatchString(nodeID) {
			return store.Nonce{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "an attestation challenge needs a node_id of the form n-<12 hex>")
		}
	default:
		return store.Nonce{}, rejection.New(edgev1.RejectReason_REJECT_REASON_MALFORMED, "challenge purpose must be ENROLL or ATTEST")
	}
	if ok, wait := s.sourceLimiter(source).Take(source, now); !ok {
		return store.Nonce{}, rejection.Retry(edgev1.RejectReason_REJECT_REASON_RATE_LIMITED, wait,
			"too many challenges from this address: retry in %s", wait.Round(time.Millisecond))
	}
	if nodeID != "" {
		if ok, wait := s.cfg.PerNode.Take(nodeID, now); !ok {
			return store.Nonce{}, rejection.Retry(edgev1.RejectReason_REJECT_REASON_RATE_LIMITED, wait,
				"too many challenges for this node: retry in %s", wait.Round(time.Millisecond))
		}
	}
	var raw [32]byte
	if _, err := io.ReadFull(s.cfg.Rand, raw[:]); err != nil {
		return store.Nonce{}, fmt.Errorf("nonce: random: %w", err)
	}
	n := store.Nonce{
		Value:     base64.RawURLEncoding.EncodeToString(raw[:]),
		NodeID:    nodeID,
		Purpose:   purpose,
		ExpiresAt: now.Add(Lifetime),
	}
	if err := s.cfg.Store.InsertNonce(ctx, n); err != nil {
		return store.Nonce{}, fmt.Errorf("store nonce: %w", err)
	}
	return n, nil
}

// sourceLimiter is the limiter for source: the bulk one for a named bulk source.
func (s *Service) sourceLimiter(source string) *ratelimit.Limiter {
	if len(s.cfg.BulkSources) > 0 {
		if a, err := netip.ParseAddr(source); err == nil {
			a = a.Unmap()
			for _, p := range s.cfg.BulkSources {
				if p.Contains(a) {
					return s.cfg.BulkPerSource
				}
			}
		}
	}
	return s.cfg.PerSource
}

// Consume spends a nonce through tx: it must exist, be unexpired at now, and have been
// issued for purpose (and, for attestation, for nodeID). Any mismatch is NONCE_INVALID
// with one message, so a prober learns nothing about which check failed.
//
// Spend it in a transaction of its own (pass the Store), before the work it
// authorizes: spent inside that work's transaction, a refusal would roll the spending
// back and the nonce could be tried again. Since every enrollment and attestation
// attempt costs a fresh nonce, the limits on issuing them (per source, per node) are
// the limits on attempts.
func Consume(ctx context.Context, tx store.Tx, value, purpose, nodeID string, now time.Time) error {
	invalid := rejection.New(edgev1.RejectReason_REJECT_REASON_NONCE_INVALID, "nonce is unknown, expired, already used or issued for another purpose: request a new challenge")
	if value == "" {
		return invalid
	}
	n, err := tx.ConsumeNonce(ctx, value, now)
	if errors.Is(err, store.ErrNotFound) {
		return invalid
	}
	if err != nil {
		return fmt.Errorf("consume nonce: %w", err)
	}
	if n.Purpose != purpose || n.NodeID != nodeID {
		return invalid
	}
	return nil
}
