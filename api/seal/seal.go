// Package seal owns the signed byte layouts of the Aegis Edge protocol: the canonical,
// domain-separated encoding that a SealNodeEnvelope's signature covers, and the
// messages a key signs to prove possession at enrollment and attestation. Both ends
// build the bytes here, so the daemon and the control plane can never disagree on
// what was signed.
//
// Every layout starts with its own domain string, and every variable-length field is
// length-prefixed, so no signature made for one purpose verifies for another and no
// two field splits encode to the same bytes.
package seal

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"google.golang.org/protobuf/proto"
)

const (
	envelopeDomain = "aegis-edge/v1/seal-node-envelope"
	enrollDomain   = "aegis-edge/v1/enroll-proof-of-possession"
	attestDomain   = "aegis-edge/v1/attest-proof-of-possession"
)

// ErrBadSignature: the signature does not verify under the key it was checked with.
var ErrBadSignature = errors.New("envelope signature does not verify")

// ErrMalformed: the envelope is missing a field the protocol requires.
var ErrMalformed = errors.New("malformed envelope")

type builder struct{ b []byte }

func newBuilder(domain string) *builder {
	bl := &builder{b: make([]byte, 0, 256)}
	bl.bytes([]byte(domain))
	return bl
}

func (bl *builder) bytes(p []byte) {
	bl.b = binary.BigEndian.AppendUint32(bl.b, uint32(len(p)))
	bl.b = append(bl.b, p...)
}

func (bl *builder) str(s string) { bl.bytes([]byte(s)) }
func (bl *builder) u64(v uint64) { bl.b = binary.BigEndian.AppendUint64(bl.b, v) }

// SigningBytes is the canonical encoding an envelope's signature covers: its kind,
// timestamp, node_id, stream_id, sequence, the SHA-256 of its token, and its payload.
func SigningBytes(env *edgev1.SealNodeEnvelope) []byte {
	bl := newBuilder(envelopeDomain)
	bl.u64(uint64(env.GetKind()))
	bl.u64(uint64(env.GetTimestampUnixMs()))
	bl.str(env.GetNodeId())
	bl.str(env.GetStreamId())
	bl.u64(env.GetSequence())
	th := sha256.Sum256([]byte(env.GetNodeSecurityToken()))
	bl.bytes(th[:])
	bl.bytes(env.GetPayload())
	return bl.b
}

// Header is what a sender fills in for one envelope.
type Header struct {
	Kind     edgev1.EnvelopeKind
	Token    string
	NodeID   string
	StreamID string
	Sequence uint64
	// Time on the server's clock (the sender's estimate).
	Time time.Time
}

// Seal marshals payload and signs the envelope with key.
func Seal(key ed25519.PrivateKey, h Header, payload proto.Message) (*edgev1.SealNodeEnvelope, error) {
	raw, err := proto.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("seal: marshal payload: %w", err)
	}
	env := &edgev1.SealNodeEnvelope{
		NodeSecurityToken: h.Token,
		Kind:              h.Kind,
		TimestampUnixMs:   h.Time.UnixMilli(),
		NodeId:            h.NodeID,
		StreamId:          h.StreamID,
		Sequence:          h.Sequence,
		Payload:           raw,
	}
	env.Signature = ed25519.Sign(key, SigningBytes(env))
	return env, nil
}

// CheckShape reports ErrMalformed when a field every envelope needs is absent, before
// any key is looked up.
func CheckShape(env *edgev1.SealNodeEnvelope) error {
	switch {
	case env == nil:
		return fmt.Errorf("%w: no envelope", ErrMalformed)
	case env.GetKind() == edgev1.EnvelopeKind_ENVELOPE_KIND_UNSPECIFIED:
		return fmt.Errorf("%w: kind is unspecified", ErrMalformed)
	case env.GetNodeId() == "":
		return fmt.Errorf("%w: node_id is empty", ErrMalformed)
	case env.GetStreamId() == "":
		return fmt.Errorf("%w: stream_id is empty", ErrMalformed)
	case env.GetSequence() == 0:
		return fmt.Errorf("%w: sequence must start at 1", ErrMalformed)
	case env.GetNodeSecurityToken() == "":
		return fmt.Errorf("%w: node_security_token is empty", ErrMalformed)
	case len(env.GetSignature()) != ed25519.SignatureSize:
		return fmt.Errorf("%w: signature is %d bytes, want %d", ErrMalformed, len(env.GetSignature()), ed25519.SignatureSize)
	}
	return nil
}

// Verify checks the envelope's shape and its signature under pub.
func Verify(pub ed25519.PublicKey, env *edgev1.SealNodeEnvelope) error {
	if err := CheckShape(env); err != nil {
		return err
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key is %d bytes", ErrBadSignature, len(pub))
	}
	if !ed25519.Verify(pub, SigningBytes(env), env.GetSignature()) {
		return ErrBadSignature
	}
	return nil
}

// Open verifies env under pub and unmarshals its payload into into.
func Open(pub ed25519.PublicKey, env *edgev1.SealNodeEnvelope, into proto.Message) error {
	if err := Verify(pub, env); err != nil {
		return err
	}
	if err := proto.Unmarshal(env.GetPayload(), into); err != nil {
		return fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	return nil
}

// EnrollMessage is what a new key signs to enroll: the server's nonce, the enrollment
// token id being redeemed, and the key itself.
func EnrollMessage(nonce, enrollmentTokenID string, publicKey []byte) []byte {
	bl := newBuilder(enrollDomain)
	bl.str(nonce)
	bl.str(enrollmentTokenID)
	bl.bytes(publicKey)
	return bl.b
}

// AttestMessage is what a node's key signs to attest: the server's nonce, the node id
// and the key.
func AttestMessage(nonce, nodeID string, publicKey []byte) []byte {
	bl := newBuilder(attestDomain)
	bl.str(nonce)
	bl.str(nodeID)
	bl.bytes(publicKey)
	return bl.b
}
