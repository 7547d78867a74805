package rpc_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Connect handlers speak the gRPC protocol too: a stock grpc-go client (the same
// wire a grpcurl or a Java client uses) calls an admin RPC with the operator's
// bearer token and gets the same answer and the same error codes.
func TestStockGRPCClientCallsAdminRPC(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	n := enroll(t, srv, srv.EnrollmentToken(t, "grpc"))

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(srv.CAPEM) {
		t.Fatal("CA PEM does not parse")
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(srv.URL, "https://"),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+srv.AdminToken)

	var resp edgev1.ListHostsResponse
	if err := conn.Invoke(authed, "/aegis.edge.v1.EdgeAdminService/ListHosts", &edgev1.ListHostsRequest{}, &resp); err != nil {
		t.Fatalf("ListHosts over gRPC: %v", err)
	}
	if len(resp.GetHosts()) != 1 || resp.GetHosts()[0].GetNodeId() != n.id {
		t.Fatalf("ListHosts over gRPC = %v, want the one enrolled host %s", resp.GetHosts(), n.id)
	}
	if got := resp.GetHosts()[0].GetTags(); len(got) != 1 || got[0] != "grpc" {
		t.Errorf("tags = %v, want [grpc]", got)
	}

	// Without the token: Unauthenticated, as a gRPC status code.
	err = conn.Invoke(ctx, "/aegis.edge.v1.EdgeAdminService/ListHosts", &edgev1.ListHostsRequest{}, &resp)
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ListHosts without a token: %v, want Unauthenticated", err)
	}
	// A host that does not exist: NotFound.
	var host edgev1.GetHostResponse
	err = conn.Invoke(authed, "/aegis.edge.v1.EdgeAdminService/GetHost", &edgev1.GetHostRequest{NodeId: "n-000000000000"}, &host)
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetHost of an unknown node: %v, want NotFound", err)
	}
}
