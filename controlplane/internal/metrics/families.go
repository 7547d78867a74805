package metrics

import (
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
)

// initFamilies creates the labelled series whose values are known in advance, at
// zero, so that every family is on the first scrape (DESIGN §6): an alert on a rate
// then has a series to compute over before the first event, and a dashboard shows
// zero rather than "no data". Envelope rejections get every reason the protocol
// defines (a bounded set).
func initFamilies(m *Metrics) {
	m.keyRotations.WithLabelValues("ok", "none")
	m.enrollments.WithLabelValues("ok")
	m.attestations.WithLabelValues("ok")
	for v := range edgev1.RejectReason_name {
		if r := edgev1.RejectReason(v); r != edgev1.RejectReason_REJECT_REASON_UNSPECIFIED {
			m.envelopeRejections.WithLabelValues(reject.Short(r))
		}
	}
	m.toolCalls.WithLabelValues("cmd.run", "ok")
	m.toolCallSecs.WithLabelValues("cmd.run")
	for _, action := range []string{"keys.rotate", "token.refresh", "cmd.run"} {
		for _, result := range []string{"succeeded", "failed", "skipped", "not_started"} {
			m.fleetRunHosts.WithLabelValues(action, result)
		}
	}
}
