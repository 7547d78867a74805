package rpc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// namedCodec sends body under any codec name: "proto" with bytes that are not a
// protobuf, or a name the server has no codec for (a wrong content type).
type namedCodec struct {
	name string
	body []byte
}

func (c namedCodec) Name() string { return c.name }

func (c namedCodec) Marshal(any) ([]byte, error) { return c.body, nil }

// Unmarshal reads protobuf: a gRPC client decodes the error details with the codec
// named "proto".
func (namedCodec) Unmarshal(b []byte, m any) error { return proto.Unmarshal(b, m.(proto.Message)) }

// unaryProcedures lists every unary RPC the control plane serves.
func unaryProcedures() []string {
	var out []string
	for _, sd := range []protoreflect.ServiceDescriptor{
		edgev1.File_aegis_edge_v1_cluster_proto.Services().ByName("NodeClusterService"),
		edgev1.File_aegis_edge_v1_admin_proto.Services().ByName("EdgeAdminService"),
	} {
		for i := 0; i < sd.Methods().Len(); i++ {
			m := sd.Methods().Get(i)
			if m.IsStreamingClient() || m.IsStreamingServer() {
				continue
			}
			out = append(out, "/"+string(sd.FullName())+"/"+string(m.Name()))
		}
	}
	return out
}

// A unary request whose body cannot be read (not a protobuf, a content type the
// server has no codec for, larger than it reads) ends with a non-OK status and a
// Rejection{MALFORMED}, on every unary RPC and over both Connect and gRPC: a client
// always learns why, as it does on the stream.
func TestUnaryRefusesUnreadableBodies(t *testing.T) {
	srv := cptest.Start(t, cptest.Options{})
	procs := unaryProcedures()
	if len(procs) < 10 {
		t.Fatalf("found only %d unary procedures: %v", len(procs), procs)
	}
	cases := []struct {
		name  string
		codec namedCodec
		says  string
	}{
		{"bad protobuf", namedCodec{"proto", []byte("\x0a\xff\xff\xff\xff\x0f not a protobuf")}, "cannot be read"},
		{"wrong content type", namedCodec{"xml", []byte("<hello/>")}, "content type"},
		{"too large", namedCodec{"proto", []byte(strings.Repeat("\x00", 2<<20))}, "larger than"},
	}
	protocols := []struct {
		name string
		opts []connect.ClientOption
	}{
		{"connect", nil},
		{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	}
	for _, pr := range protocols {
		for _, tc := range cases {
			t.Run(pr.name+"/"+tc.name, func(t *testing.T) {
				for _, proc := range procs {
					opts := append([]connect.ClientOption{connect.WithCodec(tc.codec)}, pr.opts...)
					c := connect.NewClient[emptypb.Empty, emptypb.Empty](srv.HTTPClient(), srv.URL+proc, opts...)
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					req := connect.NewRequest(&emptypb.Empty{})
					req.Header().Set("Authorization", "Bearer "+srv.AdminToken)
					_, err := c.CallUnary(ctx, req)
					cancel()
					if err == nil {
						t.Errorf("%s: answered OK", proc)
						continue
					}
					r, ok := reject.From(err)
					if !ok {
						t.Errorf("%s: %v (code %s), want a Rejection with MALFORMED", proc, err, connect.CodeOf(err))
						continue
					}
					if r.GetReason() != edgev1.RejectReason_REJECT_REASON_MALFORMED {
						t.Errorf("%s: refused with %s (%s), want MALFORMED", proc, r.GetReason(), r.GetMessage())
					}
					if !strings.Contains(r.GetMessage(), tc.says) {
						t.Errorf("%s: refusal message %q does not say %q", proc, r.GetMessage(), tc.says)
					}
					if r.GetServerTime() == nil {
						t.Errorf("%s: the refusal carries no server_time", proc)
					}
					if connect.CodeOf(err) != connect.CodeInvalidArgument {
						t.Errorf("%s: code %s, want invalid_argument", proc, connect.CodeOf(err))
					}
				}
			})
		}
	}
}
