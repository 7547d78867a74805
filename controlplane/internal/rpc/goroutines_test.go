package rpc_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

// bareCluster is the least a ConnectEdge server can do: Welcome, then ack.
type bareCluster struct {
	edgev1connect.UnimplementedNodeClusterServiceHandler
}

func (bareCluster) ConnectEdge(_ context.Context, bs *connect.BidiStream[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]) error {
	if _, err := bs.Receive(); err != nil {
		return nil
	}
	if err := bs.Send(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_Welcome{Welcome: &edgev1.Welcome{SessionId: "s"}}}); err != nil {
		return nil
	}
	for {
		env, err := bs.Receive()
		if err != nil {
			return nil
		}
		if err := bs.Send(&edgev1.EdgeCommand{Command: &edgev1.EdgeCommand_HeartbeatAck{HeartbeatAck: &edgev1.HeartbeatAck{Sequence: env.GetSequence()}}}); err != nil {
			return nil
		}
	}
}

// settle waits until the goroutine count is at most want (want < 0: until it stops
// changing), and returns it.
func settle(want int) int {
	deadline := time.Now().Add(5 * time.Second)
	last, same := -1, 0
	for {
		n := runtime.NumGoroutine()
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
		if (want >= 0 && n <= want) || (want < 0 && same >= 5) || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond) // polling a count, not waiting for correctness
	}
}

// An idle daemon's stream costs the control plane no goroutine beyond what a bare
// connect-go stream costs (the handler's): kicks and commands are sent by a
// goroutine started when one arrives. Measured in one process against a bare
// connect-go server on the same HTTP/2 client, so the client's goroutines cancel out.
func TestIdleStreamCostsNoExtraGoroutine(t *testing.T) {
	const n = 20

	// Bare reference.
	mux := http.NewServeMux()
	mux.Handle(edgev1connect.NewNodeClusterServiceHandler(bareCluster{}))
	hs := httptest.NewUnstartedServer(mux)
	hs.EnableHTTP2 = true
	hs.StartTLS()
	bare := edgev1connect.NewNodeClusterServiceClient(hs.Client(), hs.URL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before := runtime.NumGoroutine()
	var bares []*connect.BidiStreamForClient[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]
	for range n {
		bs := bare.ConnectEdge(ctx)
		bares = append(bares, bs)
		if err := bs.Send(&edgev1.SealNodeEnvelope{NodeId: "n-000000000000"}); err != nil {
			t.Fatal(err)
		}
		if _, err := bs.Receive(); err != nil {
			t.Fatal(err)
		}
		if err := bs.Send(&edgev1.SealNodeEnvelope{Sequence: 2}); err != nil {
			t.Fatal(err)
		}
		if _, err := bs.Receive(); err != nil {
			t.Fatal(err)
		}
	}
	perBare := float64(settle(-1)-before) / n
	for _, bs := range bares {
		_ = bs.CloseRequest()
		_ = bs.CloseResponse()
	}
	cancel()
	hs.CloseClientConnections()
	hs.Close()

	// The control plane, same client shape (one HTTP/2 connection for every stream).
	srv := cptest.Start(t, cptest.Options{})
	var nodes []*node
	for range n {
		nodes = append(nodes, enroll(t, srv, srv.EnrollmentToken(t)))
	}
	before = settle(-1)
	for _, nd := range nodes {
		st := nd.open(t, time.Now)
		st.hello()
		st.heartbeat()
	}
	want := before + int(perBare*n)
	perAegis := float64(settle(want)-before) / n
	t.Logf("goroutines per idle stream in this process (client and server): control plane %.2f, bare connect-go %.2f", perAegis, perBare)
	if perAegis > perBare {
		t.Fatalf("an idle stream costs %.2f goroutines in this process, a bare connect-go stream %.2f: want no more", perAegis, perBare)
	}
}
