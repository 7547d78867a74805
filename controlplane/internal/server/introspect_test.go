package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/controlplane/internal/bootstrap"
	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

// A stock gRPC client (what grpcurl and kubelet use) checks health without a token
// and lists the services by reflection only with an admin token.
func TestGRPCHealthAndReflection(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	s := startServer(t, config.File{DataDir: data}, nil)
	tok, err := os.ReadFile(filepath.Join(data, bootstrap.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CAPEM())
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", edgev1connect.EdgeAdminServiceName} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q: %v %v", svc, resp, err)
		}
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Fatalf("health of an unknown service: %v, want NotFound", err)
	}

	list := func(ctx context.Context) ([]string, error) {
		st, err := reflectpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return nil, err
		}
		// A refusal can end the stream before the request is sent: grpc-go's Send then
		// returns io.EOF, and the status is what Recv returns.
		if err := st.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		resp, err := st.Recv()
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		return names, nil
	}
	// Refused: no token, a malformed one, a wrong secret.
	for _, auth := range []string{"", "Bearer nonsense", "Bearer " + strings.TrimSpace(string(tok))[:17] + strings.Repeat("0", 32)} {
		c := ctx
		if auth != "" {
			c = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
		}
		if _, err := list(c); status.Code(err) != codes.Unauthenticated {
			t.Errorf("reflection with %q: %v, want Unauthenticated", auth, err)
		}
	}
	names, err := list(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(string(tok))))
	if err != nil {
		t.Fatalf("reflection with the admin token: %v", err)
	}
	joined := strings.Join(names, ",")
	for _, want := range []string{edgev1connect.NodeClusterServiceName, edgev1connect.EdgeAdminServiceName, "grpc.health.v1.Health"} {
		if !strings.Contains(joined, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}
