// Package enrolltoken owns the enrollment token's text form. A token is
//
//	<id>.<secret>.<ca>[.<server>]
//
// id is 16 lowercase hex characters (public: it names the token in listings), secret
// is 32 lowercase hex characters (the control plane keeps only its SHA-256), ca is the
// unpadded base64url SHA-256 of the control plane's CA certificate (DER), so a host can
// pin the server's TLS before it has any other trust (as kubeadm does), and server,
// when present, is the unpadded base64url of the control plane's URL, so
// `aegis edge enroll --token T` needs nothing else.
package enrolltoken

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrMalformed is wrapped by every Parse error.
var ErrMalformed = errors.New("malformed enrollment token")

const (
	idLen     = 16
	secretLen = 32
)

// Token is a parsed enrollment token.
type Token struct {
	ID     string
	Secret string
	// CAHash is the SHA-256 of the CA certificate's DER bytes.
	CAHash [32]byte
	// Server is the control plane URL; empty when the token does not carry one.
	Server string
}

// New makes a token with a fresh random id and secret.
func New(caDER []byte, server string) (Token, error) {
	var raw [(idLen + secretLen) / 2]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return Token{}, fmt.Errorf("enrolltoken: random: %w", err)
	}
	return Token{
		ID:     hex.EncodeToString(raw[:idLen/2]),
		Secret: hex.EncodeToString(raw[idLen/2:]),
		CAHash: sha256.Sum256(caDER),
		Server: server,
	}, nil
}

// String is the token's text form.
func (t Token) String() string {
	s := t.ID + "." + t.Secret + "." + base64.RawURLEncoding.EncodeToString(t.CAHash[:])
	if t.Server != "" {
		s += "." + base64.RawURLEncoding.EncodeToString([]byte(t.Server))
	}
	return s
}

// SecretHash is what the control plane stores.
func SecretHash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// SecretMatches compares a presented secret against a stored hash in constant time.
func SecretMatches(secret string, stored []byte) bool {
	return subtle.ConstantTimeCompare(SecretHash(secret), stored) == 1
}

// MatchesCA reports whether der is the certificate the token pins.
func (t Token) MatchesCA(der []byte) bool {
	h := sha256.Sum256(der)
	return subtle.ConstantTimeCompare(h[:], t.CAHash[:]) == 1
}

func isLowerHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// Parse reads a token's text form. Errors never echo the secret.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	parts := strings.Split(s, ".")
	if len(parts) != 3 && len(parts) != 4 {
		return Token{}, fmt.Errorf("%w: want <id>.<secret>.<ca>[.<server>], got %d dot-separated parts", ErrMalformed, len(parts))
	}
	var t Token
	t.ID, t.Secret = parts[0], parts[1]
	if len(t.ID) != idLen || !isLowerHex(t.ID) {
		return Token{}, fmt.Errorf("%w: id must be %d lowercase hex characters", ErrMalformed, idLen)
	}
	if len(t.Secret) != secretLen || !isLowerHex(t.Secret) {
		return Token{}, fmt.Errorf("%w: secret must be %d lowercase hex characters", ErrMalformed, secretLen)
	}
	ca, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(ca) != sha256.Size {
		return Token{}, fmt.Errorf("%w: CA fingerprint must be an unpadded base64url SHA-256", ErrMalformed)
	}
	copy(t.CAHash[:], ca)
	if len(parts) == 4 {
		raw, err := base64.RawURLEncoding.DecodeString(parts[3])
		if err != nil {
			return Token{}, fmt.Errorf("%w: server part is not unpadded base64url", ErrMalformed)
		}
		u, err := url.Parse(string(raw))
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return Token{}, fmt.Errorf("%w: server part is not an http(s) URL", ErrMalformed)
		}
		t.Server = string(raw)
	}
	return t, nil
}
