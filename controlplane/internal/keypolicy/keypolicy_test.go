package keypolicy_test

import (
	"crypto/sha256"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/controlplane/internal/keypolicy"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var now = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func openStore(t testing.TB) store.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "cp.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.CreateTenant(t.Context(), store.Tenant{ID: "t-1", Name: "one", Kind: store.TenantTeam, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	return s
}

func addDaemon(t testing.TB, s store.Store, id string, tags []string, keySince time.Time, status string) {
	t.Helper()
	key := sha256.Sum256([]byte(id))
	d := store.Daemon{NodeID: id, TenantID: "t-1", DisplayName: id, Tags: tags, OS: "linux", PublicKey: key[:], Status: store.DaemonActive, EnrolledAt: keySince}
	if err := s.InsertDaemon(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if status == store.DaemonRevoked {
		if err := s.RevokeDaemon(t.Context(), id, now); err != nil {
			t.Fatal(err)
		}
	}
}

// The effective maximum: the smallest of the policies selecting a host; none
// selecting it means no due time; a revoked host is never overdue.
func TestStatusOf(t *testing.T) {
	ps := []store.RotationPolicy{
		{Name: "prod", Target: "tags=AnyOf(prod)", MaxKeyAge: 90 * keyage.Day},
		{Name: "web", Target: "tags=AnyOf(web)", MaxKeyAge: 30 * keyage.Day},
		{Name: "broken", Target: "tags=Any(", MaxKeyAge: time.Hour}, // selects nothing
	}
	d := store.Daemon{NodeID: "n-1", Tags: []string{"prod", "web"}, EnrolledAt: now.Add(-31 * keyage.Day), Status: store.DaemonActive}
	ks := keypolicy.StatusOf(d, ps, now)
	if ks.Max != 30*keyage.Day || !ks.Overdue || !ks.DueAt.Equal(now.Add(-keyage.Day)) {
		t.Errorf("prod+web host: %+v", ks)
	}
	d.KeyRotatedAt = now.Add(-time.Hour) // rotated since: age counts from the rotation
	if ks := keypolicy.StatusOf(d, ps, now); ks.Overdue || ks.Age != time.Hour {
		t.Errorf("after a rotation: %+v", ks)
	}
	d.Tags = []string{"dev"}
	if ks := keypolicy.StatusOf(d, ps, now); ks.Max != 0 || !ks.DueAt.IsZero() || ks.Overdue {
		t.Errorf("unselected host: %+v", ks)
	}
	d.Tags, d.KeyRotatedAt, d.Status = []string{"web"}, time.Time{}, store.DaemonRevoked
	if ks := keypolicy.StatusOf(d, ps, now); ks.Overdue {
		t.Errorf("revoked host overdue: %+v", ks)
	}
}

// The host's own rotation.max_key_age (from its Hello) smaller than its policy's
// wins: a 1h local maximum under a 90d policy makes the key due an hour after it was
// made, and overdue once it is older, on an injected clock.
func TestStatusOfLocalMaxKeyAge(t *testing.T) {
	ps := []store.RotationPolicy{{Name: "prod", Target: "tags=AnyOf(prod)", MaxKeyAge: 90 * keyage.Day}}
	made := now.Add(-30 * time.Minute)
	d := store.Daemon{NodeID: "n-1", Tags: []string{"prod"}, EnrolledAt: made, Status: store.DaemonActive, LocalMaxKeyAge: time.Hour}
	ks := keypolicy.StatusOf(d, ps, now)
	if ks.Max != time.Hour || !ks.DueAt.Equal(made.Add(time.Hour)) || ks.Overdue {
		t.Errorf("30 minutes into a 1h local maximum: %+v, want due at %v", ks, made.Add(time.Hour))
	}
	if ks := keypolicy.StatusOf(d, ps, made.Add(time.Hour+time.Second)); !ks.Overdue {
		t.Errorf("past the local maximum: %+v, want overdue", ks)
	}
	// A larger local maximum changes nothing; with no policy, the local one alone counts.
	d.LocalMaxKeyAge = 100 * keyage.Day
	if ks := keypolicy.StatusOf(d, ps, now); ks.Max != 90*keyage.Day {
		t.Errorf("local 100d under a 90d policy: max %v", ks.Max)
	}
	d.LocalMaxKeyAge, d.Tags = time.Hour, nil
	if ks := keypolicy.StatusOf(d, ps, now); ks.Max != time.Hour || !ks.DueAt.Equal(made.Add(time.Hour)) {
		t.Errorf("local 1h, no policy: %+v", ks)
	}
}

func TestCollector(t *testing.T) {
	s := openStore(t)
	clock := now
	c := &keypolicy.Collector{Store: s, Now: func() time.Time { return clock }, TTL: time.Minute}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)

	// Both families from the first scrape, on an empty fleet.
	if n, err := testutil.GatherAndCount(reg, "aegis_edge_hosts_key_overdue", "aegis_edge_host_key_age_days"); err != nil || n != 2 {
		t.Fatalf("families on an empty fleet: %d, %v", n, err)
	}

	addDaemon(t, s, "n-000000000001", []string{"prod"}, now.Add(-100*keyage.Day), store.DaemonActive)  // overdue under 90d
	addDaemon(t, s, "n-000000000002", []string{"prod"}, now.Add(-10*keyage.Day), store.DaemonActive)   // fine
	addDaemon(t, s, "n-000000000003", nil, now.Add(-400*keyage.Day), store.DaemonActive)               // old, no policy
	addDaemon(t, s, "n-000000000004", []string{"prod"}, now.Add(-400*keyage.Day), store.DaemonRevoked) // not counted
	addDaemon(t, s, "n-000000000005", []string{"prod"}, now.Add(-2*time.Hour), store.DaemonActive)     // overdue by its own 1h
	if err := s.SetDaemonLocalMaxKeyAge(t.Context(), "n-000000000005", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRotationPolicy(t.Context(), store.RotationPolicy{TenantID: "t-1", Name: "prod", Target: "tags=AnyOf(prod)", MaxKeyAge: 90 * keyage.Day}); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Minute) // past the TTL
	want := `
# HELP aegis_edge_hosts_key_overdue Active hosts whose key is older than their effective max age: the smallest of the rotation policies selecting them and of their own rotation.max_key_age (fleet-wide).
# TYPE aegis_edge_hosts_key_overdue gauge
aegis_edge_hosts_key_overdue 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "aegis_edge_hosts_key_overdue"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "aegis_edge_host_key_age_days" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		got := map[float64]uint64{}
		for _, b := range h.GetBucket() {
			got[b.GetUpperBound()] = b.GetCumulativeCount()
		}
		if h.GetSampleCount() != 4 || got[7] != 1 || got[30] != 2 || got[90] != 2 || got[180] != 3 || got[365] != 3 {
			t.Errorf("key age histogram: count %d, buckets %v", h.GetSampleCount(), got)
		}
	}
}
