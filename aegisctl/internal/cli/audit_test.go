package cli

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

type fakeAuditor struct {
	fakeAdmin
	verify *edgev1.VerifyAuditResponse
}

func (f *fakeAuditor) VerifyAudit(_ context.Context, req *connect.Request[edgev1.VerifyAuditRequest]) (*connect.Response[edgev1.VerifyAuditResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(f.verify), nil
}

// A broken chain exits 1 naming the first bad entry, in text and in JSON; an intact
// one exits 0 with the count.
func TestAuditVerifyExitStatus(t *testing.T) {
	admin := &fakeAuditor{verify: &edgev1.VerifyAuditResponse{Ok: true, EntriesChecked: 12}}
	f := loggedIn(t, admin)
	out, errOut, code := f.run(t, "", nil, "audit", "verify")
	if code != 0 || out != "audit chain intact: 12 entries\n" || errOut != "" {
		t.Fatalf("intact: code %d, stdout %q, stderr %q", code, out, errOut)
	}

	admin.verify = &edgev1.VerifyAuditResponse{EntriesChecked: 6, FirstBadId: 7, Problem: "its contents do not match its hash: the entry was edited, or moved from another position"}
	out, errOut, code = f.run(t, "", nil, "audit", "verify")
	if code != 1 || out != "" || !strings.HasPrefix(errOut, "aegisctl: audit chain broken at entry 7: its contents do not match its hash") ||
		!strings.Contains(errOut, "audit list --after 5 --limit 2") {
		t.Fatalf("broken: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, _, code = f.run(t, "", nil, "audit", "verify", "-o", "json")
	if code != 1 || !strings.Contains(out, `"first_bad_id": 7`) || !strings.Contains(out, `"ok": false`) {
		t.Fatalf("broken, json: code %d, stdout %q", code, out)
	}
}

func TestAuditListUsage(t *testing.T) {
	f := loggedIn(t, &fakeAuditor{})
	for _, args := range [][]string{{"--limit", "0"}, {"--limit", "1001"}, {"--after", "-1"}, {"stray"}} {
		_, errOut, code := f.run(t, "", nil, append([]string{"audit", "list"}, args...)...)
		if code != 2 || !strings.HasPrefix(errOut, "aegisctl: ") {
			t.Fatalf("audit list %v: code %d, stderr %q; want a usage error", args, code, errOut)
		}
	}
}
