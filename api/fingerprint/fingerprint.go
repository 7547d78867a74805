// Package fingerprint owns the one way Aegis Edge names a public key to people and in
// token bindings: "SHA256:" followed by the unpadded standard base64 of the SHA-256 of
// the raw key, as OpenSSH prints it.
package fingerprint

import (
	"crypto/sha256"
	"encoding/base64"
)

// Prefix starts every fingerprint.
const Prefix = "SHA256:"

// Of returns the fingerprint of a raw public key.
func Of(publicKey []byte) string {
	sum := sha256.Sum256(publicKey)
	return Prefix + base64.RawStdEncoding.EncodeToString(sum[:])
}

// OfDER returns the fingerprint of a DER certificate, the form an enrollment token
// pins the control plane's CA with.
func OfDER(der []byte) string { return Of(der) }
