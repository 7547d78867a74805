package seal

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"google.golang.org/protobuf/proto"
)

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func sample(t testing.TB, priv ed25519.PrivateKey) *edgev1.SealNodeEnvelope {
	t.Helper()
	env, err := Seal(priv, Header{
		Kind: edgev1.EnvelopeKind_ENVELOPE_KIND_EDGE_EVENT, Token: "tok", NodeID: "n-1",
		StreamID: "s-1", Sequence: 7, Time: time.UnixMilli(1700000000000),
	}, &edgev1.EdgeEvent{Event: &edgev1.EdgeEvent_Hello{Hello: &edgev1.Hello{Hostname: "h"}}})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestSealOpenRoundTrip(t *testing.T) {
	pub, priv := newKey(t)
	env := sample(t, priv)
	var ev edgev1.EdgeEvent
	if err := Open(pub, env, &ev); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if ev.GetHello().GetHostname() != "h" {
		t.Fatalf("payload lost: %v", &ev)
	}
}

// Every signed field must be covered: changing any one of them breaks the signature.
func TestEveryFieldIsCovered(t *testing.T) {
	pub, priv := newKey(t)
	mutations := map[string]func(e *edgev1.SealNodeEnvelope){
		"kind":      func(e *edgev1.SealNodeEnvelope) { e.Kind = edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY },
		"timestamp": func(e *edgev1.SealNodeEnvelope) { e.TimestampUnixMs++ },
		"node_id":   func(e *edgev1.SealNodeEnvelope) { e.NodeId = "n-2" },
		"stream_id": func(e *edgev1.SealNodeEnvelope) { e.StreamId = "s-2" },
		"sequence":  func(e *edgev1.SealNodeEnvelope) { e.Sequence++ },
		"token":     func(e *edgev1.SealNodeEnvelope) { e.NodeSecurityToken = "other" },
		"payload":   func(e *edgev1.SealNodeEnvelope) { e.Payload = append(e.Payload, 0) },
		"signature": func(e *edgev1.SealNodeEnvelope) { e.Signature[0] ^= 1 },
	}
	for name, mutate := range mutations {
		t.Run(name, func(t *testing.T) {
			env := proto.Clone(sample(t, priv)).(*edgev1.SealNodeEnvelope)
			mutate(env)
			if err := Verify(pub, env); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("tampered %s: Verify = %v, want ErrBadSignature", name, err)
			}
		})
	}
}

func TestOtherKeyRefused(t *testing.T) {
	_, priv := newKey(t)
	otherPub, _ := newKey(t)
	if err := Verify(otherPub, sample(t, priv)); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("Verify under another key = %v, want ErrBadSignature", err)
	}
}

func TestMalformedRefusedBeforeCrypto(t *testing.T) {
	pub, priv := newKey(t)
	for name, mutate := range map[string]func(e *edgev1.SealNodeEnvelope){
		"no kind":     func(e *edgev1.SealNodeEnvelope) { e.Kind = 0 },
		"no node":     func(e *edgev1.SealNodeEnvelope) { e.NodeId = "" },
		"no stream":   func(e *edgev1.SealNodeEnvelope) { e.StreamId = "" },
		"sequence 0":  func(e *edgev1.SealNodeEnvelope) { e.Sequence = 0 },
		"no token":    func(e *edgev1.SealNodeEnvelope) { e.NodeSecurityToken = "" },
		"short sig":   func(e *edgev1.SealNodeEnvelope) { e.Signature = e.Signature[:10] },
		"nil message": nil,
	} {
		var env *edgev1.SealNodeEnvelope
		if mutate != nil {
			env = sample(t, priv)
			mutate(env)
		}
		if err := Verify(pub, env); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Verify = %v, want ErrMalformed", name, err)
		}
	}
}

// Length prefixes keep field boundaries: moving bytes from one field to the next
// must change the encoding.
func TestNoFieldSplitAmbiguity(t *testing.T) {
	a := EnrollMessage("ab", "c", []byte("k"))
	b := EnrollMessage("a", "bc", []byte("k"))
	if bytes.Equal(a, b) {
		t.Fatal("field boundaries are ambiguous")
	}
	if bytes.Equal(EnrollMessage("n", "x", []byte("k")), AttestMessage("n", "x", []byte("k"))) {
		t.Fatal("enroll and attest proofs share a domain")
	}
}

func FuzzVerify(f *testing.F) {
	pub, priv := newKey(f)
	good, _ := proto.Marshal(sample(f, priv))
	f.Add(good)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var env edgev1.SealNodeEnvelope
		if proto.Unmarshal(raw, &env) != nil {
			return
		}
		err := Verify(pub, &env)
		if err == nil && !bytes.Equal(raw, good) {
			// A different encoding may still carry the same fields; only accept it
			// if it signs exactly what the good envelope signed.
			var g edgev1.SealNodeEnvelope
			_ = proto.Unmarshal(good, &g)
			if !bytes.Equal(SigningBytes(&env), SigningBytes(&g)) {
				t.Fatalf("forged envelope verified: %v", &env)
			}
		}
	})
}

func TestRotateMessageBindsEveryInput(t *testing.T) {
	at := time.UnixMilli(1_800_000_000_000)
	base := RotateNewKeyMessage("r1", "n-1", []byte("old"), []byte("new"), at)
	for name, other := range map[string][]byte{
		"rotation id": RotateNewKeyMessage("r2", "n-1", []byte("old"), []byte("new"), at),
		"node":        RotateNewKeyMessage("r1", "n-2", []byte("old"), []byte("new"), at),
		"old key":     RotateNewKeyMessage("r1", "n-1", []byte("olx"), []byte("new"), at),
		"new key":     RotateNewKeyMessage("r1", "n-1", []byte("old"), []byte("nex"), at),
		"time":        RotateNewKeyMessage("r1", "n-1", []byte("old"), []byte("new"), at.Add(time.Millisecond)),
		"attest":      AttestMessage("r1", "n-1", []byte("new")),
	} {
		if bytes.Equal(base, other) {
			t.Errorf("changing the %s leaves the signed bytes equal", name)
		}
	}
}
