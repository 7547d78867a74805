package keypolicy

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/prometheus/client_golang/prometheus"
)

// KeyAgeBucketsDays are the key-age histogram's upper bounds, in days: a week, a
// month, the usual 90-day and 6-month cadences, a year.
var KeyAgeBucketsDays = []float64{1, 7, 30, 60, 90, 180, 365}

// Collector reports, at scrape time, every active host's key age (a histogram in
// days) and how many hosts are overdue against their rotation policy, over the whole
// fleet (every replica reports the same numbers: aggregate with max, not sum). The
// store is read at most once per TTL; a failed read keeps the last numbers. Both
// families are present from the first scrape, at zero on an empty fleet.
type Collector struct {
	Store  store.Tx
	Now    func() time.Time
	Logger *slog.Logger
	// TTL bounds how often a scrape reads the store (default 30s).
	TTL time.Duration

	mu      sync.Mutex
	readAt  time.Time
	overdue float64
	count   uint64
	sumDays float64
	buckets map[float64]uint64
}

var (
	overdueDesc = prometheus.NewDesc("aegis_edge_hosts_key_overdue",
		"Active hosts whose key is older than their effective max age: the smallest of the rotation policies selecting them and of their own rotation.max_key_age (fleet-wide).", nil, nil)
	keyAgeDesc = prometheus.NewDesc("aegis_edge_host_key_age_days",
		"Age of each active host's key, in days (fleet-wide, at scrape time).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- overdueDesc
	ch <- keyAgeDesc
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ttl := c.TTL
	if ttl == 0 {
		ttl = 30 * time.Second
	}
	if now := c.Now(); c.buckets == nil || now.Sub(c.readAt) >= ttl {
		if err := c.read(now); err != nil {
			if c.Logger != nil {
				c.Logger.Warn("key age metrics: read the store", "err", err)
			}
			if c.buckets == nil {
				c.buckets = map[float64]uint64{}
				for _, b := range KeyAgeBucketsDays {
					c.buckets[b] = 0
				}
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(overdueDesc, prometheus.GaugeValue, c.overdue)
	ch <- prometheus.MustNewConstHistogram(keyAgeDesc, c.count, c.sumDays, c.buckets)
}

// read recomputes the numbers; called with mu held.
func (c *Collector) read(now time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := c.Store.ListDaemons(ctx, store.DaemonFilter{})
	if err != nil {
		return err
	}
	ps, err := c.Store.ListRotationPolicies(ctx, "")
	if err != nil {
		return err
	}
	byTenant := ByTenant(ps)
	buckets := make(map[float64]uint64, len(KeyAgeBucketsDays))
	for _, b := range KeyAgeBucketsDays {
		buckets[b] = 0
	}
	var overdue float64
	var count uint64
	var sum float64
	for _, d := range ds {
		if d.Status == store.DaemonRevoked {
			continue
		}
		ks := StatusOf(d, byTenant[d.TenantID], now)
		days := float64(ks.Age) / float64(keyage.Day)
		count++
		sum += days
		for _, b := range KeyAgeBucketsDays {
			if days <= b {
				buckets[b]++ // cumulative, as Prometheus wants
			}
		}
		if ks.Overdue {
			overdue++
		}
	}
	c.readAt, c.overdue, c.count, c.sumDays, c.buckets = now, overdue, count, sum, buckets
	return nil
}
