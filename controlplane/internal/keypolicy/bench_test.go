package keypolicy_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkKeyAgeScrape is one uncached scrape of the key-age collector over 5,000
// hosts and 3 policies on SQLite; BenchmarkListDaemonsReference, the store read it
// cannot avoid, is the same-run reference.
func benchFleet(b *testing.B) store.Store {
	s := openStore(b)
	for i := range 5000 {
		tags := []string{"web"}
		if i%2 == 0 {
			tags = append(tags, "prod")
		}
		addDaemon(b, s, fmt.Sprintf("n-%012x", i), tags, now.Add(-time.Duration(i%200)*keyage.Day), store.DaemonActive)
	}
	for _, p := range []store.RotationPolicy{
		{TenantID: "t-1", Name: "prod", Target: "tags=AnyOf(prod)", MaxKeyAge: 90 * keyage.Day},
		{TenantID: "t-1", Name: "web", Target: "tags=AllOf(web)", MaxKeyAge: 180 * keyage.Day},
		{TenantID: "t-1", Name: "all", Target: "all", MaxKeyAge: 365 * keyage.Day},
	} {
		if err := s.PutRotationPolicy(b.Context(), p); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

func BenchmarkKeyAgeScrape(b *testing.B) {
	s := benchFleet(b)
	clock := now
	c := &keypolicy.Collector{Store: s, Now: func() time.Time { return clock }, TTL: time.Nanosecond}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	for b.Loop() {
		clock = clock.Add(time.Second)
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkListDaemonsReference(b *testing.B) {
	s := benchFleet(b)
	for b.Loop() {
		if _, err := s.ListDaemons(b.Context(), store.DaemonFilter{}); err != nil {
			b.Fatal(err)
		}
	}
}
