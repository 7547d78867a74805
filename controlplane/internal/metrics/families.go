package metrics

import (
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// initFamilies creates the labelled series whose values are known in advance, at
// zero, so that every family is on the first scrape (DESIGN §6): an alert on a rate
// then has a series to compute over before the first event, and a dashboard shows
// zero rather than "no data". Envelope rejections get every reason the protocol
// defines (a bounded set).
func initFamilies(m *Metrics) {
	m.keyRotations.WithLabelValues("ok", "none")
	m.keyRotations.WithLabelValues("replayed", "none")
	m.keyRotations.WithLabelValues("error", "internal")
	for _, result := range []string{"ok", "error"} {
		m.enrollments.WithLabelValues(result)
		m.attestations.WithLabelValues(result)
	}
	// Refusals by every reason the protocol defines (a bounded set), wherever a
	// family is labelled by one: an alert on "refused for bad_signature" has its
	// series before the first such refusal.
	for v := range edgev1.RejectReason_name {
		if r := edgev1.RejectReason(v); r != edgev1.RejectReason_REJECT_REASON_UNSPECIFIED {
			reason := reject.Short(r)
			m.envelopeRejections.WithLabelValues(reason)
			m.enrollments.WithLabelValues(reason)
			m.attestations.WithLabelValues(reason)
			m.keyRotations.WithLabelValues("refused", reason)
		}
	}
	m.streamAdmissions.WithLabelValues("admitted")
	m.streamAdmissions.WithLabelValues("busy")
	// Every procedure of the two network services, from their descriptors: a new
	// RPC gets its series without anyone remembering to add it here.
	for _, fd := range []protoreflect.FileDescriptor{edgev1.File_aegis_edge_v1_cluster_proto, edgev1.File_aegis_edge_v1_admin_proto} {
		svcs := fd.Services()
		for i := range svcs.Len() {
			svc := svcs.Get(i)
			methods := svc.Methods()
			for j := range methods.Len() {
				proc := "/" + string(svc.FullName()) + "/" + string(methods.Get(j).Name())
				m.rpcRequests.WithLabelValues(proc, "ok")
				m.rpcSeconds.WithLabelValues(proc)
			}
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
