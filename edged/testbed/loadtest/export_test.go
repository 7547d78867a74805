package loadtest

import (
	"context"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

// ExternalControlPlane starts bin as a control plane someone else runs, for the
// --server tests: its URL, CA and admin token files, and a count of its hosts.
func ExternalControlPlane(t *testing.T, bin string) (url, caFile, tokenFile string, hosts func() int) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cp")
	cp, err := startControlPlane(context.Background(), startOptions{Binary: bin, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	count := func() int {
		resp, err := cp.Admin().ListHosts(context.Background(), connect.NewRequest(&edgev1.ListHostsRequest{Target: "all"}))
		if err != nil {
			t.Fatal(err)
		}
		return int(resp.Msg.GetTotalCount())
	}
	return cp.URL, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "admin.token"), count
}
