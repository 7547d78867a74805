package rpc_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"google.golang.org/protobuf/proto"
)

// rotation is one RotateEdgeKey request as a daemon builds it (contract: a fresh
// key, a UUID, the new key's signature over seal.RotateNewKeyMessage); tests tamper
// with its payload to play the attacker.
type rotation struct {
	pub     ed25519.PublicKey
	priv    ed25519.PrivateKey
	payload *edgev1.RotateEdgeKeyRequest
}

func uuidV4(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// newRotation builds a correct request from n's current key to a fresh key.
func (n *node) newRotation(t *testing.T, at time.Time) *rotation {
	t.Helper()
	pub, priv := newKey(t)
	return n.rotationTo(t, pub, priv, at)
}

// rotationTo builds a correct request from n's current key to pub (signed by priv).
func (n *node) rotationTo(t *testing.T, pub ed25519.PublicKey, priv ed25519.PrivateKey, at time.Time) *rotation {
	t.Helper()
	id := uuidV4(t)
	at = time.UnixMilli(at.UnixMilli())
	return &rotation{pub: pub, priv: priv, payload: &edgev1.RotateEdgeKeyRequest{
		RotationId:      id,
		NodeId:          n.id,
		NewPublicKey:    pub,
		TimestampUnixMs: at.UnixMilli(),
		NewKeySignature: ed25519.Sign(priv, seal.RotateNewKeyMessage(id, n.id, n.pub, pub, at)),
	}}
}

// unary seals payload as a one-envelope call of kind, signed by signer and carrying
// token, with a fresh stream id (as the contract asks of every unary call).
func (n *node) unary(t *testing.T, kind edgev1.EnvelopeKind, signer ed25519.PrivateKey, token string, payload proto.Message, now time.Time) *edgev1.SealNodeEnvelope {
	t.Helper()
	env, err := seal.Seal(signer, seal.Header{Kind: kind, Token: token, NodeID: n.id, StreamID: randomID(t), Sequence: 1, Time: now}, payload)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// rotate sends r under n's current key and token.
func (n *node) rotate(t *testing.T, r *rotation, now time.Time) (*edgev1.RotateEdgeKeyResponse, error) {
	t.Helper()
	return n.send(t, n.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, n.key, n.token, r.payload, now))
}

func (n *node) send(t *testing.T, env *edgev1.SealNodeEnvelope) (*edgev1.RotateEdgeKeyResponse, error) {
	t.Helper()
	resp, err := n.client.RotateEdgeKey(context.Background(), connect.NewRequest(env))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// adopt switches n to the rotated key and token, as the daemon's local swap does.
func (n *node) adopt(r *rotation, resp *edgev1.RotateEdgeKeyResponse) {
	n.key, n.pub, n.token = r.priv, r.pub, resp.GetNodeSecurityToken()
}

func jti(t *testing.T, token string) string {
	t.Helper()
	c, err := nodetoken.Peek(token)
	if err != nil {
		t.Fatal(err)
	}
	return c.JTI()
}

func getDaemon(t *testing.T, srv *cptest.Server, nodeID string) store.Daemon {
	t.Helper()
	d, err := srv.Store.GetDaemon(context.Background(), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// keyClaimed reports whether any daemon ever claimed pub (probing with a claim that
// is rolled back, so the probe leaves nothing behind).
func keyClaimed(t *testing.T, srv *cptest.Server, pub []byte) bool {
	t.Helper()
	errProbe := fmt.Errorf("probe")
	err := srv.Store.InTx(context.Background(), func(tx store.Tx) error {
		if err := tx.ClaimPublicKey(context.Background(), pub, "n-probe", time.Now()); err != nil {
			return err
		}
		return errProbe
	})
	switch {
	case errors.Is(err, errProbe):
		return false
	case errors.Is(err, store.ErrKeyInUse):
		return true
	}
	t.Fatalf("probe claim: %v", err)
	return false
}

func auditActions(t *testing.T, srv *cptest.Server, nodeID string) []store.AuditEntry {
	t.Helper()
	all, err := srv.Store.ListAudit(context.Background(), "", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.AuditEntry
	for _, e := range all {
		if e.NodeID == nodeID {
			out = append(out, e)
		}
	}
	return out
}

// unchanged asserts that a refused rotation left no trace: same key, no rotation
// time, the attacker's key unclaimed, the old token still good for a new stream.
func unchanged(t *testing.T, srv *cptest.Server, n *node, attackerKey []byte, audits int) {
	t.Helper()
	d := getDaemon(t, srv, n.id)
	if !bytes.Equal(d.PublicKey, n.pub) || d.PreviousPublicKey != nil || !d.KeyRotatedAt.IsZero() {
		t.Fatalf("daemon changed by a refused rotation: key %s, previous %x, rotated %s", fingerprint.Of(d.PublicKey), d.PreviousPublicKey, d.KeyRotatedAt)
	}
	if attackerKey != nil && keyClaimed(t, srv, attackerKey) {
		t.Fatal("a refused rotation claimed the new key")
	}
	if got := len(auditActions(t, srv, n.id)); got != audits {
		t.Fatalf("audit entries = %d, want %d", got, audits)
	}
	toks, err := srv.Store.ActiveNodeTokens(context.Background(), n.id, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].JTI != jti(t, n.token) {
		t.Fatalf("active tokens after a refused rotation = %v, want only the old one", toks)
	}
	st := n.open(t, time.Now)
	st.hello()
	st.heartbeat()
}

func TestRotateEdgeKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		opts.RotationOverlap = 5 * time.Second
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t, "prod"))
		oldPub, oldKey, oldToken := n.pub, n.key, n.token

		r := n.newRotation(t, time.Now())
		resp, err := n.rotate(t, r, time.Now())
		if err != nil {
			t.Fatalf("RotateEdgeKey: %v (reason %s)", err, reject.Reason(err))
		}
		if resp.GetRotationId() != r.payload.GetRotationId() {
			t.Errorf("rotation_id = %q, want %q", resp.GetRotationId(), r.payload.GetRotationId())
		}
		if resp.GetNewKeyFingerprint() != fingerprint.Of(r.pub) {
			t.Errorf("new_key_fingerprint = %s, want %s", resp.GetNewKeyFingerprint(), fingerprint.Of(r.pub))
		}
		claims, err := nodetoken.Peek(resp.GetNodeSecurityToken())
		if err != nil {
			t.Fatal(err)
		}
		if claims.Cnf.KeyFingerprint != fingerprint.Of(r.pub) || claims.NodeID() != n.id {
			t.Errorf("new token bound to %s for %s, want %s for %s", claims.Cnf.KeyFingerprint, claims.NodeID(), fingerprint.Of(r.pub), n.id)
		}
		if !resp.GetTokenExpiresAt().AsTime().Equal(claims.Expires()) {
			t.Errorf("token_expires_at %s != token exp %s", resp.GetTokenExpiresAt().AsTime(), claims.Expires())
		}
		if got := resp.GetOverlapUntil().AsTime().Sub(resp.GetRotatedAt().AsTime()); got != 5*time.Second {
			t.Errorf("overlap_until - rotated_at = %s, want the configured 5s", got)
		}
		if resp.GetServerTime() == nil {
			t.Error("no server_time")
		}

		// Storage: key swapped with the previous kept, old token blacklisted as
		// rotated, exactly the new token active, one rotation row, one audit line.
		d := getDaemon(t, srv, n.id)
		if !bytes.Equal(d.PublicKey, r.pub) || !bytes.Equal(d.PreviousPublicKey, oldPub) {
			t.Fatalf("daemon key %s previous %s, want %s and %s", fingerprint.Of(d.PublicKey), fingerprint.Of(d.PreviousPublicKey), fingerprint.Of(r.pub), fingerprint.Of(oldPub))
		}
		if !d.KeyRotatedAt.Equal(resp.GetRotatedAt().AsTime()) || !d.OverlapUntil.Equal(resp.GetOverlapUntil().AsTime()) {
			t.Errorf("key_rotated_at %s overlap_until %s, want %s and %s", d.KeyRotatedAt, d.OverlapUntil, resp.GetRotatedAt().AsTime(), resp.GetOverlapUntil().AsTime())
		}
		bl, err := srv.Store.ListBlacklist(context.Background(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(bl) != 1 || bl[0].JTI != jti(t, oldToken) || bl[0].Reason != "rotated" {
			t.Fatalf("blacklist = %+v, want the old token as rotated", bl)
		}
		toks, err := srv.Store.ActiveNodeTokens(context.Background(), n.id, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(toks) != 1 || toks[0].JTI != claims.JTI() || toks[0].KeyFingerprint != fingerprint.Of(r.pub) {
			t.Fatalf("active tokens = %+v, want only the new one", toks)
		}
		rot, err := srv.Store.GetRotation(context.Background(), r.payload.GetRotationId())
		if err != nil {
			t.Fatal(err)
		}
		if rot.NodeID != n.id || rot.OldFingerprint != fingerprint.Of(oldPub) || rot.NewFingerprint != fingerprint.Of(r.pub) || rot.NewTokenJTI != claims.JTI() {
			t.Errorf("rotation row = %+v", rot)
		}
		var rotates []store.AuditEntry
		for _, e := range auditActions(t, srv, n.id) {
			if e.Action == "rotate" {
				rotates = append(rotates, e)
			}
		}
		if len(rotates) != 1 || rotates[0].Details["old_fingerprint"] != fingerprint.Of(oldPub) ||
			rotates[0].Details["new_fingerprint"] != fingerprint.Of(r.pub) || rotates[0].Details["rotation_id"] != r.payload.GetRotationId() {
			t.Errorf("rotate audit entries = %+v", rotates)
		}

		// Operators see the new fingerprint and the rotation time.
		host, err := srv.AdminClient().GetHost(context.Background(), connect.NewRequest(&edgev1.GetHostRequest{NodeId: n.id}))
		if err != nil {
			t.Fatal(err)
		}
		if host.Msg.GetHost().GetKeyFingerprint() != fingerprint.Of(r.pub) || !host.Msg.GetHost().GetKeyRotatedAt().AsTime().Equal(d.KeyRotatedAt) {
			t.Errorf("GetHost shows %s rotated at %v", host.Msg.GetHost().GetKeyFingerprint(), host.Msg.GetHost().GetKeyRotatedAt())
		}
		list, err := srv.AdminClient().ListHosts(context.Background(), connect.NewRequest(&edgev1.ListHostsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Msg.GetHosts()) != 1 || list.Msg.GetHosts()[0].GetKeyRotatedAt() == nil {
			t.Errorf("ListHosts does not show key_rotated_at: %v", list.Msg.GetHosts())
		}

		// After commit: the pre-rotation key and token open nothing.
		old := &node{key: oldKey, pub: oldPub, id: n.id, token: oldToken, client: n.client}
		st := old.open(t, time.Now)
		st.send(st.envelope(hello(), nil))
		st.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED)
		mixed := &node{key: oldKey, pub: oldPub, id: n.id, token: resp.GetNodeSecurityToken(), client: n.client}
		st = mixed.open(t, time.Now)
		st.send(st.envelope(hello(), nil))
		st.expectReject(edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
		_, err = old.attest(t)
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_TOKEN_KEY_MISMATCH)
		// A rotation signed by the old key with the old token: the token is withdrawn.
		_, err = old.rotate(t, old.newRotation(t, time.Now()), time.Now())
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED)

		// The new key and token work, and the new key attests.
		n.adopt(r, resp)
		st = n.open(t, time.Now)
		st.hello()
		st.heartbeat()
		if _, err := n.attest(t); err != nil {
			t.Fatalf("attest with the new key: %v", err)
		}
	})
}

// The guide's attack table, performed. Every refusal changes nothing.
func TestRotateAttacks(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		tok := func() string { return srv.EnrollmentToken(t) }

		t.Run("stolen old key rotates to a key the attacker does not hold: no new-key signature", func(t *testing.T) {
			victim := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, victim.id))
			r := victim.newRotation(t, time.Now())
			r.payload.NewKeySignature = nil
			_, err := victim.rotate(t, r, time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
			unchanged(t, srv, victim, r.pub, audits)
		})

		t.Run("stolen old key rotates to a key the attacker does not hold: forged new-key signature", func(t *testing.T) {
			victim := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, victim.id))
			theirPub, _ := newKey(t) // the key someone else holds
			_, attacker := newKey(t)
			r := victim.rotationTo(t, theirPub, attacker, time.Now())
			_, err := victim.rotate(t, r, time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
			unchanged(t, srv, victim, theirPub, audits)
		})

		t.Run("new-key signature over another rotation's content", func(t *testing.T) {
			victim := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, victim.id))
			r := victim.newRotation(t, time.Now())
			r.payload.RotationId = uuidV4(t) // signature made for a different id
			_, err := victim.rotate(t, r, time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
			unchanged(t, srv, victim, r.pub, audits)
		})

		t.Run("valid new-key signature, envelope signed by another key", func(t *testing.T) {
			victim := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, victim.id))
			r := victim.newRotation(t, time.Now())
			_, attacker := newKey(t)
			_, err := victim.send(t, victim.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, attacker, victim.token, r.payload, time.Now()))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
			// Or by the new key itself (the attacker holds only that one).
			_, err = victim.send(t, victim.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, r.priv, victim.token, r.payload, time.Now()))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)
			unchanged(t, srv, victim, r.pub, audits)
		})

		t.Run("valid new-key signature, no authority", func(t *testing.T) {
			victim := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, victim.id))
			attacker := enroll(t, srv, tok())
			r := victim.newRotation(t, time.Now())
			// No token at all.
			_, err := victim.send(t, victim.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, r.priv, "", r.payload, time.Now()))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_MALFORMED)
			// The attacker's own genuine token and key, naming the victim.
			_, err = victim.send(t, victim.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, attacker.key, attacker.token, r.payload, time.Now()))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_TOKEN_NODE_MISMATCH)
			// A payload naming the victim inside the attacker's own envelope.
			_, err = attacker.send(t, attacker.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, attacker.key, attacker.token, r.payload, time.Now()))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_MALFORMED)
			unchanged(t, srv, victim, r.pub, audits)
		})

		t.Run("a stream envelope is not a rotation", func(t *testing.T) {
			victim := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, victim.id))
			r := victim.newRotation(t, time.Now())
			_, err := victim.send(t, victim.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT, victim.key, victim.token, r.payload, time.Now()))
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_MALFORMED)
			unchanged(t, srv, victim, r.pub, audits)
		})

		t.Run("second daemon rotates to a key another node holds", func(t *testing.T) {
			a := enroll(t, srv, tok())
			b := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, b.id))
			r := b.rotationTo(t, a.pub, a.key, time.Now())
			_, err := b.rotate(t, r, time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_IN_USE)
			unchanged(t, srv, b, nil, audits)
		})

		t.Run("rotate back to the node's own old key", func(t *testing.T) {
			n := enroll(t, srv, tok())
			firstPub, firstKey := n.pub, n.key
			r := n.newRotation(t, time.Now())
			resp, err := n.rotate(t, r, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			n.adopt(r, resp)
			audits := len(auditActions(t, srv, n.id))
			back := n.rotationTo(t, firstPub, firstKey, time.Now())
			_, err = n.rotate(t, back, time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_IN_USE)
			if d := getDaemon(t, srv, n.id); !bytes.Equal(d.PublicKey, n.pub) {
				t.Fatal("key changed by a refused rotation")
			}
			if got := len(auditActions(t, srv, n.id)); got != audits {
				t.Fatalf("audit entries %d, want %d", got, audits)
			}
		})

		t.Run("rotate to the current key", func(t *testing.T) {
			n := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, n.id))
			_, err := n.rotate(t, n.rotationTo(t, n.pub, n.key, time.Now()), time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_INVALID)
			unchanged(t, srv, n, nil, audits)
		})

		t.Run("new key of the wrong size", func(t *testing.T) {
			n := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, n.id))
			r := n.newRotation(t, time.Now())
			r.payload.NewPublicKey = r.pub[:31]
			_, err := n.rotate(t, r, time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_KEY_INVALID)
			unchanged(t, srv, n, r.pub, audits)
		})

		t.Run("request older than ten minutes", func(t *testing.T) {
			n := enroll(t, srv, tok())
			audits := len(auditActions(t, srv, n.id))
			r := n.newRotation(t, time.Now().Add(-11*time.Minute))
			_, err := n.rotate(t, r, time.Now())
			r2 := expectRejection(t, err, edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW)
			if r2.GetServerTime() == nil {
				t.Error("a clock-skew refusal carries no server_time")
			}
			r = n.newRotation(t, time.Now().Add(5*time.Minute))
			_, err = n.rotate(t, r, time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_CLOCK_SKEW)
			unchanged(t, srv, n, r.pub, audits)
		})

		t.Run("revoked node", func(t *testing.T) {
			n := enroll(t, srv, tok())
			if err := srv.Store.RevokeDaemon(context.Background(), n.id, time.Now()); err != nil {
				t.Fatal(err)
			}
			_, err := n.rotate(t, n.newRotation(t, time.Now()), time.Now())
			expectReason(t, err, edgev1.RejectReason_REJECT_REASON_REVOKED)
		})
	})
}

func expectRejection(t *testing.T, err error, want edgev1.RejectReason) *edgev1.Rejection {
	t.Helper()
	expectReason(t, err, want)
	r, _ := reject.From(err)
	return r
}

// A lost reply is harmless: the same rotation_id returns the same token, even though
// the old token the retry carries is now blacklisted. The same id with other content
// is a conflict.
func TestRotateIdempotent(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		r := n.newRotation(t, time.Now())
		first, err := n.rotate(t, r, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		audits := len(auditActions(t, srv, n.id))

		// The daemon never saw the reply: it retries with the old key and token and a
		// fresh envelope.
		again, err := n.rotate(t, r, time.Now())
		if err != nil {
			t.Fatalf("retry: %v (reason %s)", err, reject.Reason(err))
		}
		if again.GetNodeSecurityToken() != first.GetNodeSecurityToken() || !again.GetRotatedAt().AsTime().Equal(first.GetRotatedAt().AsTime()) {
			t.Fatal("a retry of one rotation_id returned a different outcome")
		}
		if got := len(auditActions(t, srv, n.id)); got != audits {
			t.Errorf("a retry wrote %d audit entries", got-audits)
		}

		// Same id, another key: a conflict, nothing changes.
		other := n.newRotation(t, time.Now())
		other.payload.RotationId = r.payload.GetRotationId()
		other.payload.NewKeySignature = ed25519.Sign(other.priv, seal.RotateNewKeyMessage(r.payload.GetRotationId(), n.id, n.pub, other.pub, time.UnixMilli(other.payload.GetTimestampUnixMs())))
		_, err = n.rotate(t, other, time.Now())
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT)
		if keyClaimed(t, srv, other.pub) {
			t.Fatal("a conflicting retry claimed its key")
		}

		// Same id from another node: a conflict too.
		m := enroll(t, srv, srv.EnrollmentToken(t))
		mr := m.newRotation(t, time.Now())
		mr.payload.RotationId = r.payload.GetRotationId()
		mr.payload.NewKeySignature = ed25519.Sign(mr.priv, seal.RotateNewKeyMessage(r.payload.GetRotationId(), m.id, m.pub, mr.pub, time.UnixMilli(mr.payload.GetTimestampUnixMs())))
		_, err = m.rotate(t, mr, time.Now())
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT)

		// The retry's envelope must still be signed by the old key.
		_, attacker := newKey(t)
		_, err = n.send(t, n.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, attacker, n.token, r.payload, time.Now()))
		expectReason(t, err, edgev1.RejectReason_REJECT_REASON_BAD_SIGNATURE)

		d := getDaemon(t, srv, n.id)
		if !bytes.Equal(d.PublicKey, r.pub) {
			t.Fatal("the daemon's key is not the first rotation's")
		}
		// After the swap, the daemon carries on with the new key.
		n.adopt(r, first)
		st := n.open(t, time.Now)
		st.hello()
		st.heartbeat()
	})
}

// Concurrent rotations of one node, each with its own id and key: exactly one wins,
// the others are told why, and the stored state is the winner's alone.
func TestRotateConcurrent(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		n := enroll(t, srv, srv.EnrollmentToken(t))
		const racers = 8
		rs := make([]*rotation, racers)
		envs := make([]*edgev1.SealNodeEnvelope, racers)
		for i := range rs {
			rs[i] = n.newRotation(t, time.Now())
			envs[i] = n.unary(t, edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, n.key, n.token, rs[i].payload, time.Now())
		}
		resps := make([]*edgev1.RotateEdgeKeyResponse, racers)
		errs := make([]error, racers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range racers {
			wg.Go(func() {
				<-start
				resps[i], errs[i] = n.send(t, envs[i])
			})
		}
		close(start)
		wg.Wait()

		winner := -1
		for i, err := range errs {
			switch r := reject.Reason(err); {
			case err == nil:
				if winner >= 0 {
					t.Fatalf("racers %d and %d both rotated", winner, i)
				}
				winner = i
			case r == edgev1.RejectReason_REJECT_REASON_ROTATION_CONFLICT, r == edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED:
			default:
				t.Fatalf("racer %d: %v (reason %s), want ROTATION_CONFLICT or TOKEN_BLACKLISTED", i, err, r)
			}
		}
		if winner < 0 {
			t.Fatal("no racer rotated")
		}
		d := getDaemon(t, srv, n.id)
		if !bytes.Equal(d.PublicKey, rs[winner].pub) {
			t.Fatal("the stored key is not the winner's")
		}
		for i, r := range rs {
			_, err := srv.Store.GetRotation(context.Background(), r.payload.GetRotationId())
			if i == winner {
				if err != nil {
					t.Fatalf("winner's rotation row: %v", err)
				}
				continue
			}
			if err == nil {
				t.Fatalf("loser %d has a rotation row", i)
			}
			if keyClaimed(t, srv, r.pub) {
				t.Fatalf("loser %d's key stayed claimed", i)
			}
		}
		toks, err := srv.Store.ActiveNodeTokens(context.Background(), n.id, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(toks) != 1 || toks[0].JTI != jti(t, resps[winner].GetNodeSecurityToken()) {
			t.Fatalf("active tokens = %+v, want exactly the winner's", toks)
		}
		rotates := 0
		for _, e := range auditActions(t, srv, n.id) {
			if e.Action == "rotate" {
				rotates++
			}
		}
		if rotates != 1 {
			t.Fatalf("%d rotate audit entries, want 1", rotates)
		}
		n.adopt(rs[winner], resps[winner])
		st := n.open(t, time.Now)
		st.hello()
		st.heartbeat()
	})
}
