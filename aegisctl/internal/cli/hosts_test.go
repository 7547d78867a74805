package cli

import (
	"context"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
)

// fakeTagger records UpdateHostTags and answers with the host's tags after it.
type fakeTagger struct {
	fakeAdmin
	mu   sync.Mutex
	tags []*edgev1.UpdateHostTagsRequest
}

func (f *fakeTagger) UpdateHostTags(_ context.Context, req *connect.Request[edgev1.UpdateHostTagsRequest]) (*connect.Response[edgev1.UpdateHostTagsResponse], error) {
	if err := f.auth(req.Header()); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.tags = append(f.tags, req.Msg)
	f.mu.Unlock()
	return connect.NewResponse(&edgev1.UpdateHostTagsResponse{Host: &edgev1.Host{
		NodeId: req.Msg.GetNodeId(), Name: "web-1", Tags: append([]string{"web"}, req.Msg.GetAdd()...),
	}}), nil
}

// loggedIn serves admin and logs in to it.
func loggedIn(t *testing.T, admin edgev1connect.EdgeAdminServiceHandler) *fixture {
	t.Helper()
	f := newFixtureWith(t, admin)
	good := writeFile(t, t.TempDir(), "good", goodToken+"\n")
	if _, errOut, code := f.run(t, "", nil, "login", "--server", f.url, "--token-file", good, "--ca-file", f.caFile); code != 0 {
		t.Fatalf("login: %d %s", code, errOut)
	}
	return f
}

func TestHostsTagFlagsAfterNodeID(t *testing.T) {
	ff := &fakeTagger{}
	f := loggedIn(t, ff)
	out, errOut, code := f.run(t, "", nil, "edge", "hosts", "tag", "n-0123456789ab", "--add", "canary, prod", "--remove=staging")
	if code != 0 || out != "n-0123456789ab (web-1) tags: web,canary,prod\n" {
		t.Errorf("exit %d stdout %q stderr %q", code, out, errOut)
	}
	out, _, code = f.run(t, "", nil, "edge", "hosts", "tag", "--add", "x", "n-0123456789ab", "-o", "json")
	if code != 0 || !strings.Contains(out, `"tags": [`) || !strings.Contains(out, `"x"`) {
		t.Errorf("json: exit %d %s", code, out)
	}
	for _, args := range [][]string{
		{"n-0123456789ab"},
		{"n-0123456789ab", "--add", "a", "--remove", "a"},
		{"n-0123456789ab", "--colour", "red"},
		{"n-0123456789ab", "n-ba9876543210", "--add", "a"},
		{"--add", "a"},
	} {
		out, errOut, code := f.run(t, "", nil, append([]string{"edge", "hosts", "tag"}, args...)...)
		if code != exitUsage || out != "" || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: exit %d stdout %q stderr %q, want a one-line usage error", args, code, out, errOut)
		}
	}
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if len(ff.tags) != 2 || strings.Join(ff.tags[0].GetAdd(), "|") != "canary|prod" || strings.Join(ff.tags[0].GetRemove(), "|") != "staging" {
		t.Errorf("requests %v", ff.tags)
	}
}
