package rpc_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

func hostStatus(t *testing.T, srv *cptest.Server, nodeID string) edgev1.HostStatus {
	t.Helper()
	resp, err := srv.AdminClient().GetHost(context.Background(), connect.NewRequest(&edgev1.GetHostRequest{NodeId: nodeID}))
	if err != nil {
		t.Fatalf("GetHost(%s): %v", nodeID, err)
	}
	return resp.Msg.GetHost().GetStatus()
}

// waitStatus polls until the host has status want: the session row is written on
// the server's side of the stream, after the Welcome or after the stream ends.
func waitStatus(t *testing.T, srv *cptest.Server, nodeID string, want edgev1.HostStatus) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := hostStatus(t, srv, nodeID)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s status = %s, want %s", nodeID, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStreamConnectAndHeartbeat(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t, "prod"))

		st := n.open(t, time.Now)
		w := st.hello()
		if w.GetHeartbeatInterval().AsDuration() != 10*time.Second {
			t.Errorf("Welcome heartbeat interval = %s, want the 10s default", w.GetHeartbeatInterval().AsDuration())
		}
		if w.GetServerTime() == nil {
			t.Error("Welcome carries no server_time")
		}
		for range 5 {
			st.heartbeat()
		}
		waitStatus(t, srv, n.id, edgev1.HostStatus_HOST_STATUS_CONNECTED)
		d, err := srv.Store.GetDaemon(context.Background(), n.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.LastSeenAt.IsZero() {
			t.Error("last_seen_at not recorded for a connected daemon")
		}

		// The daemon hangs up: the host is Disconnected, not left Connected.
		_ = st.bs.CloseRequest()
		_, _ = st.recv()
		st.cancel()
		waitStatus(t, srv, n.id, edgev1.HostStatus_HOST_STATUS_DISCONNECTED)
	})
}

// Each envelope the guide's protocol must refuse, refused with its typed reason on a
// real TLS HTTP/2 server; the stream ends with the refusal.
func TestStreamRefusals(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		tok := func() string { return srv.EnrollmentToken(t) }

		t.Run("tampered payload", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			env := st.envelope(hello(), nil)
			env.Payload = append(env.Payload, 0x08, 0x01) // a valid protobuf field, not signed
			st.send(env)
			st.expectReject(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
		})

		t.Run("tampered sequence after hello", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			st.hello()
			env := st.envelope(heartbeat(), nil)
			env.Sequence += 10
			st.send(env)
			st.expectReject(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
		})

		t.Run("signed by another key", func(t *testing.T) {
			n := enroll(t, srv, tok())
			_, other := newKey(t)
			st := n.open(t, time.Now)
			h := seal.Header{Kind: edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT, Token: n.token, NodeID: n.id,
				StreamID: st.id, Sequence: 1, Time: time.Now()}
			env, err := seal.Seal(other, h, hello())
			if err != nil {
				t.Fatal(err)
			}
			st.send(env)
			st.expectReject(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
		})

		t.Run("replayed envelope on the same stream", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			st.hello()
			env := st.envelope(heartbeat(), nil)
			st.send(env)
			if cmd, err := st.recv(); err != nil || cmd.GetHeartbeatAck() == nil {
				t.Fatalf("first heartbeat: %v %v", cmd, err)
			}
			st.send(env) // the very same bytes again
			st.expectReject(edgev1.RejectReason_REJECT_REASON_REPLAY)
		})

		t.Run("replayed hello on a new connection", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			first := st.envelope(hello(), nil)
			st.send(first)
			if cmd, err := st.recv(); err != nil || cmd.GetWelcome() == nil {
				t.Fatalf("hello: %v %v", cmd, err)
			}
			// An eavesdropper replays the captured Hello on a connection of its own.
			again := n.open(t, time.Now)
			again.send(first)
			again.expectReject(edgev1.RejectReason_REJECT_REASON_REPLAY)
		})

		t.Run("token of another node", func(t *testing.T) {
			a := enroll(t, srv, tok())
			b := enroll(t, srv, tok())
			st := a.open(t, time.Now)
			st.send(st.envelope(hello(), func(h *seal.Header) { h.Token = b.token }))
			st.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_NODE_MISMATCH)
		})

		t.Run("forged token", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			forged := []byte(n.token)
			forged[len(forged)-3] ^= 0x01 // flip a bit of the token's signature
			st.send(st.envelope(hello(), func(h *seal.Header) { h.Token = string(forged) }))
			st.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_INVALID)
		})

		t.Run("unknown node", func(t *testing.T) {
			n := enroll(t, srv, tok())
			if err := srv.Store.DeleteDaemon(context.Background(), n.id); err != nil {
				t.Fatal(err)
			}
			st := n.open(t, time.Now)
			st.send(st.envelope(hello(), nil))
			st.expectReject(edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE)
			_, err := n.attest(t)
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_UNKNOWN_NODE)
		})

		t.Run("revoked node", func(t *testing.T) {
			n := enroll(t, srv, tok())
			if err := srv.Store.RevokeDaemon(context.Background(), n.id, time.Now()); err != nil {
				t.Fatal(err)
			}
			st := n.open(t, time.Now)
			st.send(st.envelope(hello(), nil))
			st.expectReject(edgev1.RejectReason_REJECT_REASON_REVOKED)
			_, err := n.attest(t)
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_REVOKED)
		})

		t.Run("first envelope is not a hello", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			st.send(st.envelope(heartbeat(), nil))
			st.expectReject(edgev1.RejectReason_REJECT_REASON_MALFORMED)
		})

		t.Run("clock skew", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			st.send(st.envelope(hello(), func(h *seal.Header) { h.Time = time.Now().Add(-10 * time.Minute) }))
			r := st.expectReject(edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW)
			if r.GetServerTime() == nil {
				t.Error("a clock-skew rejection must carry the server's time")
			}
		})

		t.Run("stream refused leaves the host disconnected", func(t *testing.T) {
			n := enroll(t, srv, tok())
			st := n.open(t, time.Now)
			st.send(st.envelope(hello(), func(h *seal.Header) { h.Sequence = 0 }))
			st.expectReject(edgev1.RejectReason_REJECT_REASON_MALFORMED)
			if got := hostStatus(t, srv, n.id); got != edgev1.HostStatus_HOST_STATUS_DISCONNECTED {
				t.Fatalf("status after a refused stream = %s, want DISCONNECTED", got)
			}
		})
	})
}

// An expired token is refused as expired (not as invalid), and the daemon's key
// earns a fresh token by attestation; the old token stays dead.
func TestExpiredTokenReattest(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		opts.TokenTTL = time.Hour
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))

		clock.Advance(time.Hour + time.Minute)
		st := n.open(t, clock.Now)
		st.send(st.envelope(hello(), nil))
		r := st.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_EXPIRED)
		if got := r.GetServerTime().AsTime(); !got.Equal(clock.Now().Truncate(time.Nanosecond)) && got.Sub(clock.Now()).Abs() > time.Second {
			t.Errorf("rejection server_time = %s, want the server's clock %s", got, clock.Now())
		}

		old := n.token
		fresh, err := n.attest(t)
		if err != nil {
			t.Fatalf("attest after expiry: %v", err)
		}
		if fresh == old {
			t.Fatal("attestation returned the expired token")
		}
		n.token = fresh
		st = n.open(t, clock.Now)
		st.hello()
		st.heartbeat()
	})
}

// Attestation supersedes the node's other tokens: a stolen copy of the old token
// cannot open a new stream, even before it expires.
func TestAttestBlacklistsOldTokenForNewStreams(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		old := n.token
		fresh, err := n.attest(t)
		if err != nil {
			t.Fatal(err)
		}
		n.token = old
		st := n.open(t, time.Now)
		st.send(st.envelope(hello(), nil))
		st.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED)

		n.token = fresh
		n.open(t, time.Now).hello()
	})
}

// A server restart tells live streams to come back (Disconnect{SHUTDOWN} with a
// reconnect hint); after it the same node reconnects with its key and token.
func TestReconnectAfterServerRestart(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		st := n.open(t, time.Now)
		st.hello()
		st.heartbeat()

		stopped := make(chan struct{})
		go func() { srv.Stop(); close(stopped) }()
		cmd, err := st.recv()
		if err != nil {
			t.Fatalf("expected Disconnect before the stream ended, got %v", err)
		}
		d := cmd.GetDisconnect()
		if d.GetReason() != edgev1.DisconnectReason_DISCONNECT_REASON_SHUTDOWN {
			t.Fatalf("expected Disconnect{SHUTDOWN}, got %v", cmd)
		}
		if d.GetReconnectAfter().AsDuration() <= 0 {
			t.Errorf("Disconnect carries no reconnect_after hint: %v", d)
		}
		<-stopped

		srv.Restart(t)
		n.client = srv.ClusterClient()
		st = n.open(t, time.Now)
		st.hello()
		st.heartbeat()
		waitStatus(t, srv, n.id, edgev1.HostStatus_HOST_STATUS_CONNECTED)
	})
}
