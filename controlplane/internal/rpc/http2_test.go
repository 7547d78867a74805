package rpc_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Many requests at once on one fresh HTTP/2 connection, the first of them encoded
// before the client has read the server's settings: the server's HTTP/2 sizing must
// accept them all (a header table smaller than the client assumes would refuse them
// with COMPRESSION_ERROR).
func TestConcurrentRequestsOnOneConnection(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	admin := srv.AdminClient()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := admin.CreateEnrollmentToken(context.Background(), connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{
				Tags: []string{"a", "b"}, Ttl: durationpb.New(time.Minute),
			}))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}
