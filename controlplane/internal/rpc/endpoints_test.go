package rpc_test

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

func get(t *testing.T, srv *cptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := srv.HTTPClient().Get(srv.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("GET %s served over HTTP/%d, want HTTP/2", path, resp.ProtoMajor)
	}
	return resp.StatusCode, string(b)
}

// metricValue finds one sample line of the Prometheus text format.
func metricValue(t *testing.T, body, series string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no sample %s in /metrics", series)
	}
	return m[1]
}

// /healthz and /readyz answer on the same TLS port, and /metrics shows what the
// issue asks for: connected daemons, RPC counts, and refusals by reason.
func TestHealthReadyAndMetrics(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := get(t, srv, p); code != http.StatusOK {
			t.Errorf("GET %s = %d %q, want 200", p, code, body)
		}
	}

	n := enroll(t, srv, srv.EnrollmentToken(t))
	st := n.open(t, time.Now)
	st.hello()
	st.heartbeat()

	bad := enroll(t, srv, srv.EnrollmentToken(t))
	_, other := newKey(t)
	bad.key = other
	bs := bad.open(t, time.Now)
	bs.send(bs.envelope(hello(), nil))
	bs.expectReject(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)

	code, body := get(t, srv, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	if v := metricValue(t, body, "aegis_edge_connected_daemons"); v != "1" {
		t.Errorf("aegis_edge_connected_daemons = %s, want 1", v)
	}
	if v := metricValue(t, body, `aegis_edge_rpc_requests_total{code="ok",procedure="/aegis.edge.v1.NodeClusterService/Enroll"}`); v != "2" {
		t.Errorf("Enroll ok count = %s, want 2", v)
	}
	if v := metricValue(t, body, `aegis_edge_envelope_rejections_total{reason="bad_signature"}`); v != "1" {
		t.Errorf("bad_signature rejections = %s, want 1", v)
	}
	if v := metricValue(t, body, "aegis_edge_heartbeats_total"); v != "1" {
		t.Errorf("heartbeats = %s, want 1", v)
	}
	if strings.Contains(body, n.token) || strings.Contains(body, srv.AdminToken) {
		t.Fatal("a secret appears in /metrics")
	}
}
