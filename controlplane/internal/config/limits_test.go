package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLimitDefaultsAreDocumented(t *testing.T) {
	c, err := Merge(Defaults(), File{DataDir: t.TempDir()}).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		ChallengePerSource: Limit{50, 200}, AttestPerNode: Limit{1, 10},
		BulkEnroll: Limit{300, 300}, StreamAdmission: Limit{300, 300},
		ShutdownReconnectWindow: 45 * time.Second,
	}
	if c.ChallengePerSource != want.ChallengePerSource || c.AttestPerNode != want.AttestPerNode ||
		c.BulkEnroll != want.BulkEnroll || c.StreamAdmission != want.StreamAdmission ||
		c.ShutdownReconnectWindow != want.ShutdownReconnectWindow || len(c.BulkEnrollSources) != 0 {
		t.Fatalf("defaults %+v", c)
	}
}

func TestLimitsFromTheConfigFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cp.yaml")
	if err := os.WriteFile(p, []byte(`
challenge_rate_per_source: "20"
challenge_burst_per_source: "40"
bulk_enroll_sources: "10.0.4.7, 10.8.0.0/16, ::ffff:192.0.2.1"
bulk_enroll_rate: "500.5"
stream_admission_rate: "1000"
shutdown_reconnect_window: 50s
`), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Merge(Defaults(), f, File{DataDir: t.TempDir()}).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if c.ChallengePerSource != (Limit{20, 40}) || c.BulkEnroll != (Limit{500.5, 300}) || c.StreamAdmission != (Limit{1000, 300}) || c.ShutdownReconnectWindow != 50*time.Second {
		t.Fatalf("limits %+v %+v %+v %s", c.ChallengePerSource, c.BulkEnroll, c.StreamAdmission, c.ShutdownReconnectWindow)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.4.7/32"), netip.MustParsePrefix("10.8.0.0/16"), netip.MustParsePrefix("192.0.2.1/32")}
	if len(c.BulkEnrollSources) != len(want) {
		t.Fatalf("bulk sources %v, want %v", c.BulkEnrollSources, want)
	}
	for i := range want {
		if c.BulkEnrollSources[i] != want[i] {
			t.Fatalf("bulk sources %v, want %v", c.BulkEnrollSources, want)
		}
	}
}

func TestBadLimitsNameTheFlag(t *testing.T) {
	for _, c := range []struct {
		f    File
		flag string
	}{
		{File{StreamAdmissionRate: "0"}, "--stream-admission-rate"},
		{File{StreamAdmissionBurst: "many"}, "--stream-admission-burst"},
		{File{ChallengeRatePerSource: "-1"}, "--challenge-rate-per-source"},
		{File{BulkEnrollSources: "10.0.0.0/33"}, "--bulk-enroll-sources"},
		{File{BulkEnrollSources: "bastion.example.com"}, "--bulk-enroll-sources"},
		{File{ShutdownReconnectWindow: "100ms"}, "--shutdown-reconnect-window"},
	} {
		_, err := Merge(Defaults(), File{DataDir: t.TempDir()}, c.f).Resolve()
		if err == nil || !strings.Contains(err.Error(), c.flag) {
			t.Errorf("%+v: error %v, want one naming %s", c.f, err, c.flag)
		}
	}
}
