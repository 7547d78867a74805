// Package metrics owns the control plane's Prometheus metrics: one struct built from a
// prometheus.Registerer, whose methods are safe to call on a nil *Metrics so that
// domain code and tests need no registry. Labels never name a node: cardinality stays
// bounded however large the fleet grows.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds every control-plane metric.
type Metrics struct {
	connectedDaemons   prometheus.Gauge
	rpcRequests        *prometheus.CounterVec
	envelopeRejections *prometheus.CounterVec
	enrollments        *prometheus.CounterVec
	heartbeats         prometheus.Counter
	blacklistEntries   prometheus.Gauge
	attestations       *prometheus.CounterVec
	tokenRefreshes     prometheus.Counter
	keyRotations       *prometheus.CounterVec
	keyRotationSecs    prometheus.Histogram
	toolCalls          *prometheus.CounterVec
	toolCallSecs       *prometheus.HistogramVec
	fleetRunsActive    prometheus.Gauge
	fleetRunHosts      *prometheus.CounterVec
	throttled          prometheus.Counter
	streamAdmissions   *prometheus.CounterVec
	rpcSeconds         *prometheus.HistogramVec
	revocationSecs     prometheus.Histogram
}

// New registers the metrics with reg. A nil reg yields working, unregistered metrics.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connectedDaemons: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aegis_edge_connected_daemons",
			Help: "Daemons with an open ConnectEdge stream on this replica.",
		}),
		rpcRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_rpc_requests_total",
			Help: "RPCs handled, by procedure and Connect code (\"ok\" on success).",
		}, []string{"procedure", "code"}),
		envelopeRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_envelope_rejections_total",
			Help: "Daemon envelopes refused, by reject reason.",
		}, []string{"reason"}),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_enrollments_total",
			Help: "Enrollment attempts, by result (\"ok\" or the reject reason).",
		}, []string{"result"}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aegis_edge_heartbeats_total",
			Help: "Heartbeats accepted.",
		}),
		blacklistEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aegis_edge_token_blacklist_entries",
			Help: "Unexpired blacklisted node tokens held in memory.",
		}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_attestations_total",
			Help: "Attestations (token refreshes), by result (\"ok\" or the reject reason).",
		}, []string{"result"}),
		tokenRefreshes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aegis_edge_token_refreshes_total",
			Help: "Successful attestations that replaced a node's still-valid token (refreshes, not re-attestations after expiry).",
		}),
		keyRotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_key_rotations_total",
			Help: "RotateEdgeKey requests, by result (ok, replayed, refused, error) and reason (\"none\" unless refused or failed).",
		}, []string{"result", "reason"}),
		keyRotationSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aegis_edge_key_rotation_duration_seconds",
			Help: "Time the control plane spent on one RotateEdgeKey request, whatever its result.",
			// A rotation is one short transaction: 1ms to ~4s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 13),
		}),
		toolCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_tool_calls_total",
			Help: "Finished tool calls, by tool and result (\"ok\", \"failed\" for a non-zero exit, or the error kind).",
		}, []string{"tool", "result"}),
		toolCallSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "aegis_edge_tool_call_duration_seconds",
			Help: "Time from sending a tool call to its result, as the control plane saw it.",
			// Commands run from milliseconds up to the deadline (60s by default): 10ms to ~1.4h.
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 20),
		}, []string{"tool"}),
		fleetRunsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aegis_edge_fleet_runs_active",
			Help: "Fleet runs this replica is driving now.",
		}),
		fleetRunHosts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_fleet_run_hosts_total",
			Help: "Hosts of fleet runs that reached an outcome, by action and result (succeeded, failed, skipped, not_started).",
		}, []string{"action", "result"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aegis_edge_throttled_requests_total",
			Help: "Rotations and attestations that had to wait for a slot of --max-concurrent-rotations.",
		}),
		streamAdmissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_edge_stream_admissions_total",
			Help: "New ConnectEdge streams by admission result: admitted, or busy (over --stream-admission-rate, told when to come back).",
		}, []string{"result"}),
		rpcSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "aegis_rpc_duration_seconds",
			Help: "Time from an RPC's start to its end, by procedure (a ConnectEdge stream: its whole life).",
			// Unary calls take 0.5ms..1s; streams live minutes to days: 0.5ms to ~9h.
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 13),
		}, []string{"procedure"}),
		revocationSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aegis_edge_revocation_propagation_seconds",
			Help: "Time from a revocation (or logout) committing to the revoked node's stream being closed, on the replica that held it.",
			// The target is well under 1s (DESIGN §7); NOTIFY plus a stream close: 1ms..~16s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
	}
	initFamilies(m)
	if reg != nil {
		reg.MustRegister(m.connectedDaemons, m.rpcRequests, m.envelopeRejections, m.enrollments,
			m.heartbeats, m.blacklistEntries, m.attestations, m.tokenRefreshes, m.keyRotations, m.keyRotationSecs,
			m.toolCalls, m.toolCallSecs, m.fleetRunsActive, m.fleetRunHosts, m.throttled,
			m.streamAdmissions, m.rpcSeconds, m.revocationSecs)
	}
	return m
}

// ConnectedDaemons moves the connected-daemons gauge by delta.
func (m *Metrics) ConnectedDaemons(delta float64) {
	if m != nil {
		m.connectedDaemons.Add(delta)
	}
}

// RPC counts one finished RPC.
func (m *Metrics) RPC(procedure, code string) {
	if m != nil {
		m.rpcRequests.WithLabelValues(procedure, code).Inc()
	}
}

// EnvelopeRejected counts one refused envelope.
func (m *Metrics) EnvelopeRejected(reason string) {
	if m != nil {
		m.envelopeRejections.WithLabelValues(reason).Inc()
	}
}

// Enrollment counts one enrollment attempt.
func (m *Metrics) Enrollment(result string) {
	if m != nil {
		m.enrollments.WithLabelValues(result).Inc()
	}
}

// Attestation counts one attestation attempt.
func (m *Metrics) Attestation(result string) {
	if m != nil {
		m.attestations.WithLabelValues(result).Inc()
	}
}

// Heartbeat counts one accepted heartbeat.
func (m *Metrics) Heartbeat() {
	if m != nil {
		m.heartbeats.Inc()
	}
}

// BlacklistSize sets the blacklist gauge.
func (m *Metrics) BlacklistSize(n int) {
	if m != nil {
		m.blacklistEntries.Set(float64(n))
	}
}

// TokenRefreshed counts one attestation that superseded a still-valid token.
func (m *Metrics) TokenRefreshed() {
	if m != nil {
		m.tokenRefreshes.Inc()
	}
}

// KeyRotation counts one RotateEdgeKey request and how long it took.
func (m *Metrics) KeyRotation(result, reason string, took time.Duration) {
	if m != nil {
		m.keyRotations.WithLabelValues(result, reason).Inc()
		m.keyRotationSecs.Observe(took.Seconds())
	}
}

// ToolCall counts one finished tool call and how long it took.
func (m *Metrics) ToolCall(tool, result string, took time.Duration) {
	if m != nil {
		m.toolCalls.WithLabelValues(tool, result).Inc()
		m.toolCallSecs.WithLabelValues(tool).Observe(took.Seconds())
	}
}

// FleetRunsActive moves the active fleet runs gauge by delta.
func (m *Metrics) FleetRunsActive(delta float64) {
	if m != nil {
		m.fleetRunsActive.Add(delta)
	}
}

// FleetRunHost counts one fleet run host's outcome.
func (m *Metrics) FleetRunHost(action, result string) {
	if m != nil {
		m.fleetRunHosts.WithLabelValues(action, result).Inc()
	}
}

// Throttled counts one request that waited for a rotation/attestation slot.
func (m *Metrics) Throttled() {
	if m != nil {
		m.throttled.Inc()
	}
}

// StreamAdmission counts one new stream's admission result (admitted, busy).
func (m *Metrics) StreamAdmission(result string) {
	if m != nil {
		m.streamAdmissions.WithLabelValues(result).Inc()
	}
}

// RPCDuration observes one finished RPC's duration.
func (m *Metrics) RPCDuration(procedure string, took time.Duration) {
	if m != nil {
		m.rpcSeconds.WithLabelValues(procedure).Observe(took.Seconds())
	}
}

// RevocationPropagated observes the time from a revocation's commit to the revoked
// stream's close.
func (m *Metrics) RevocationPropagated(took time.Duration) {
	if m != nil {
		m.revocationSecs.Observe(max(took, 0).Seconds())
	}
}
