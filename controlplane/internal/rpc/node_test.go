package rpc_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/enrolltoken"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

// fakeClock is a settable protocol clock shared by the test and the server.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// node is a daemon simulated with api/seal directly (not edged's code), so these
// tests pin the protocol itself.
type node struct {
	key    ed25519.PrivateKey
	pub    ed25519.PublicKey
	id     string
	token  string
	tenant *edgev1.Tenant
	tags   []string
	client edgev1connect.NodeClusterServiceClient
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func challengeNonce(t *testing.T, c edgev1connect.NodeClusterServiceClient, purpose edgev1.ChallengePurpose, nodeID string) string {
	t.Helper()
	resp, err := c.Challenge(context.Background(), connect.NewRequest(&edgev1.ChallengeRequest{Purpose: purpose, NodeId: nodeID}))
	if err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	if len(resp.Msg.GetNonce()) < 40 {
		t.Fatalf("nonce %q too short", resp.Msg.GetNonce())
	}
	return resp.Msg.GetNonce()
}

// enrollRequest builds a correct EnrollRequest for tokenText with key.
func enrollRequest(t *testing.T, c edgev1connect.NodeClusterServiceClient, tokenText string, pub ed25519.PublicKey, priv ed25519.PrivateKey) *edgev1.EnrollRequest {
	t.Helper()
	tok, err := enrolltoken.Parse(tokenText)
	if err != nil {
		t.Fatalf("parse enrollment token: %v", err)
	}
	nonce := challengeNonce(t, c, edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ENROLL, "")
	return &edgev1.EnrollRequest{
		EnrollmentTokenId: tok.ID,
		EnrollmentSecret:  tok.Secret,
		PublicKey:         pub,
		Nonce:             nonce,
		Signature:         ed25519.Sign(priv, seal.EnrollMessage(nonce, tok.ID, pub)),
		Hostname:          "host-" + tok.ID[:4],
		Os:                "linux",
	}
}

func enroll(t *testing.T, srv *cptest.Server, tokenText string) *node {
	t.Helper()
	c := srv.ClusterClient()
	pub, priv := newKey(t)
	resp, err := c.Enroll(context.Background(), connect.NewRequest(enrollRequest(t, c, tokenText, pub, priv)))
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	return &node{key: priv, pub: pub, id: resp.Msg.GetNodeId(), token: resp.Msg.GetNodeSecurityToken(),
		tenant: resp.Msg.GetTenant(), tags: resp.Msg.GetTags(), client: c}
}

func (n *node) attest(t *testing.T) (string, error) {
	t.Helper()
	nonce := challengeNonce(t, n.client, edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ATTEST, n.id)
	resp, err := n.client.Attest(context.Background(), connect.NewRequest(&edgev1.AttestRequest{
		NodeId: n.id, PublicKey: n.pub, Nonce: nonce,
		Signature: ed25519.Sign(n.key, seal.AttestMessage(nonce, n.id, n.pub)),
	}))
	if err != nil {
		return "", err
	}
	return resp.Msg.GetNodeSecurityToken(), nil
}

// stream is one ConnectEdge stream driven by hand.
type stream struct {
	t      *testing.T
	n      *node
	bs     *connect.BidiStreamForClient[edgev1.SealNodeEnvelope, edgev1.EdgeCommand]
	id     string
	seq    uint64
	now    func() time.Time
	cancel context.CancelFunc
}

func randomID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func (n *node) open(t *testing.T, now func() time.Time) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	st := &stream{t: t, n: n, bs: n.client.ConnectEdge(ctx), id: randomID(t), now: now, cancel: cancel}
	t.Cleanup(func() { _ = st.bs.CloseRequest(); cancel() })
	return st
}

func (s *stream) envelope(ev *edgev1.EdgeEvent, mutate func(*seal.Header)) *edgev1.SealNodeEnvelope {
	s.t.Helper()
	s.seq++
	h := seal.Header{Kind: edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT, Token: s.n.token, NodeID: s.n.id,
		StreamID: s.id, Sequence: s.seq, Time: s.now()}
	if mutate != nil {
		mutate(&h)
	}
	env, err := seal.Seal(s.n.key, h, ev)
	if err != nil {
		s.t.Fatal(err)
	}
	return env
}

func hello() *edgev1.EdgeEvent {
	return &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Hello{Hello: &edgev1.Hello{AgentVersion: "test", Hostname: "h", Os: "linux"}}}
}

func heartbeat() *edgev1.EdgeEvent {
	return &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Heartbeat{Heartbeat: &edgev1.Heartbeat{}}}
}

func (s *stream) send(env *edgev1.SealNodeEnvelope) {
	s.t.Helper()
	if err := s.bs.Send(env); err != nil && !errors.Is(err, io.EOF) {
		s.t.Fatalf("send: %v", err)
	}
}

func (s *stream) recv() (*edgev1.EdgeCommand, error) { return s.bs.Receive() }

// hello sends a Hello and expects a Welcome.
func (s *stream) hello() *edgev1.Welcome {
	s.t.Helper()
	s.send(s.envelope(hello(), nil))
	cmd, err := s.recv()
	if err != nil {
		s.t.Fatalf("expected Welcome, got error %v (reason %s)", err, reject.Reason(err))
	}
	w := cmd.GetWelcome()
	if w == nil || w.GetSessionId() == "" {
		s.t.Fatalf("expected Welcome, got %v", cmd)
	}
	return w
}

// heartbeat sends a heartbeat and expects its ack.
func (s *stream) heartbeat() {
	s.t.Helper()
	env := s.envelope(heartbeat(), nil)
	s.send(env)
	cmd, err := s.recv()
	if err != nil {
		s.t.Fatalf("expected HeartbeatAck, got error %v (reason %s)", err, reject.Reason(err))
	}
	if cmd.GetHeartbeatAck().GetSequence() != env.GetSequence() {
		s.t.Fatalf("expected HeartbeatAck for %d, got %v", env.GetSequence(), cmd)
	}
}

// expectReject reads until the stream ends and checks it ended with reason.
func (s *stream) expectReject(want edgev1.RejectReason) *edgev1.Rejection {
	s.t.Helper()
	cmd, err := s.recv()
	if err == nil {
		s.t.Fatalf("expected %s, got %v", want, cmd)
	}
	r, ok := reject.From(err)
	if !ok {
		s.t.Fatalf("expected rejection %s, got %v", want, err)
	}
	if r.GetReason() != want {
		s.t.Fatalf("expected %s, got %s (%s)", want, r.GetReason(), r.GetMessage())
	}
	return r
}

func expectReason(t *testing.T, err error, want edgev1.RejectReason) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected %s, got success", want)
	}
	if got := reject.Reason(err); got != want {
		t.Fatalf("expected %s, got %s (%v)", want, got, err)
	}
}
