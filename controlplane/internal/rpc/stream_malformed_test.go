package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"google.golang.org/protobuf/proto"
)

// garbageCodec is a client codec that claims to speak protobuf and sends bytes that
// are not one: what a broken or hostile client puts on the wire.
type garbageCodec struct{ body []byte }

func (garbageCodec) Name() string { return "proto" }

func (g garbageCodec) Marshal(any) ([]byte, error) { return g.body, nil }

func (garbageCodec) Unmarshal(b []byte, m any) error { return proto.Unmarshal(b, m.(proto.Message)) }

// garbageMarker, as an envelope's payload, makes switchCodec send garbage instead.
var garbageMarker = []byte("send garbage instead")

// switchCodec speaks protobuf until asked (garbageMarker) to send garbage.
type switchCodec struct{}

func (switchCodec) Name() string { return "proto" }

func (switchCodec) Marshal(m any) ([]byte, error) {
	if env, ok := m.(*edgev1.SealNodeEnvelope); ok && bytes.Equal(env.GetPayload(), garbageMarker) {
		return []byte("\x0a\xff\xff\xff\xff\x0f"), nil // a length that runs past the end
	}
	return proto.Marshal(m.(proto.Message))
}

func (switchCodec) Unmarshal(b []byte, m any) error { return proto.Unmarshal(b, m.(proto.Message)) }

// expectStreamRefused reads the stream until it ends and checks it ended with a
// non-OK status carrying a Rejection with reason want.
func expectStreamRefused(t *testing.T, bs *connect.BidiStreamForClient[edgev1.SealNodeEnvelope, edgev1.EdgeCommand], want edgev1.RejectReason) *edgev1.Rejection {
	t.Helper()
	cmd, err := bs.Receive()
	if err == nil {
		t.Fatalf("expected the stream to be refused with %s, got %v", want, cmd)
	}
	if errors.Is(err, io.EOF) {
		t.Fatalf("stream ended with a bare EOF (status OK), want a refusal with %s", want)
	}
	r, ok := reject.From(err)
	if !ok {
		t.Fatalf("stream ended with %v (code %s), want a Rejection with %s", err, connect.CodeOf(err), want)
	}
	if r.GetReason() != want {
		t.Fatalf("stream refused with %s (%s), want %s", r.GetReason(), r.GetMessage(), want)
	}
	return r
}

// Messages that are not envelopes at all, or are larger than the server reads, end
// the stream with a typed refusal, never with status OK or a bare EOF.
func TestStreamRefusesMalformedAndOversizedMessages(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)

		open := func(t *testing.T, opts ...connect.ClientOption) *connect.BidiStreamForClient[edgev1.SealNodeEnvelope, edgev1.EdgeCommand] {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			t.Cleanup(cancel)
			c := edgev1connect.NewNodeClusterServiceClient(srv.HTTPClient(), srv.URL, opts...)
			bs := c.ConnectEdge(ctx)
			t.Cleanup(func() { _ = bs.CloseRequest() })
			return bs
		}

		t.Run("garbage first message", func(t *testing.T) {
			bs := open(t, connect.WithCodec(garbageCodec{body: []byte("\xff\xff\xff\xff not a protobuf")}))
			_ = bs.Send(&edgev1.SealNodeEnvelope{})
			r := expectStreamRefused(t, bs, edgev1.RejectReason_REJECT_REASON_MALFORMED)
			if r.GetServerTime() == nil {
				t.Error("the refusal carries no server_time")
			}
		})

		t.Run("garbage after hello", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			// One HTTP/2 stream cannot switch codecs, so this client speaks protobuf
			// for a genuine Hello and garbage after it.
			bs := open(t, connect.WithCodec(switchCodec{}))
			st := &stream{t: t, n: n, id: randomID(t), now: time.Now}
			if err := bs.Send(st.envelope(hello(), nil)); err != nil {
				t.Fatal(err)
			}
			if cmd, err := bs.Receive(); err != nil || cmd.GetWelcome() == nil {
				t.Fatalf("hello: %v %v", cmd, err)
			}
			_ = bs.Send(&edgev1.SealNodeEnvelope{Payload: garbageMarker})
			expectStreamRefused(t, bs, edgev1.RejectReason_REJECT_REASON_MALFORMED)
			waitStatus(t, srv, n.id, edgev1.HostStatus_HOST_STATUS_DISCONNECTED)
		})

		t.Run("oversized hello", func(t *testing.T) {
			n := enroll(t, srv, srv.EnrollmentToken(t))
			bs := open(t)
			big := hello()
			big.GetHello().Hostname = strings.Repeat("h", 2<<20)
			st := &stream{t: t, n: n, id: randomID(t), now: time.Now}
			_ = bs.Send(st.envelope(big, nil))
			r := expectStreamRefused(t, bs, edgev1.RejectReason_REJECT_REASON_MALFORMED)
			if !strings.Contains(r.GetMessage(), "larger than") {
				t.Errorf("refusal message %q does not say the message was too large", r.GetMessage())
			}
			if got := hostStatus(t, srv, n.id); got == edgev1.HostStatus_HOST_STATUS_CONNECTED {
				t.Fatalf("status after an oversized hello = %s", got)
			}
		})
	})
}
