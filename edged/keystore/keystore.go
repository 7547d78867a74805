// Package keystore owns a host's edge state directory: where it is, its layout, the
// locks that serialize every change to it (between edged and aegisctl, and between two
// daemons), atomic 0600 writes of its secret files, the ssh-style permission checks
// that make edged refuse loose key files, and loading the enrolled identity.
//
// edged and aegisctl both use it, so a stopped host can be served by the CLI itself
// with exactly the same rules.
package keystore

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside the state directory.
const (
	KeyFile     = "node.key"
	TokenFile   = "node.token"
	NodeFile    = "node.json"
	CAFile      = "ca.crt"
	SocketFile  = "edged.sock"
	PIDFile     = "edged.pid"
	LockFile    = ".lock"
	ArchiveDir  = "archive"
	RevokedFile = "revoked.json"

	// A key rotation in progress (see the rotation package): the new key and token
	// wait beside the current ones until they are renamed over them, and
	// rotation.json records the request so a crash can be reconciled with the server.
	KeyNextFile   = "node.key.next"
	TokenNextFile = "node.token.next"
	RotationFile  = "rotation.json"
	// ArchiveIndexFile records, for each archived key, when it may be deleted, so the
	// daemon's housekeeping honours a --keep-old chosen by whoever archived it.
	ArchiveIndexFile = "archive.json"
)

// EnvStateDir overrides the default state directory when no flag is given.
const EnvStateDir = "AEGIS_EDGE_STATE_DIR"

// DirMode and FileMode are what the directory and every file in it must have.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

var (
	// ErrNotEnrolled: node.json does not exist, so this directory holds no identity.
	ErrNotEnrolled = errors.New("this host is not enrolled")
	// ErrDaemonRunning: another edged holds the directory's daemon lock.
	ErrDaemonRunning = errors.New("another edged is running")
	// ErrInsecure is wrapped by every CheckPermissions refusal (see *PermissionError).
	ErrInsecure = errors.New("insecure permissions")
)

// SystemStateDir is the state directory of a host where edged was installed from the
// package: systemd's StateDirectory=aegis-edge, created by the package 0700.
const SystemStateDir = "/var/lib/aegis-edge"

// ResolveDir picks the state directory: the flag if set, else $AEGIS_EDGE_STATE_DIR,
// else $STATE_DIRECTORY (edged under its systemd unit), else SystemStateDir when it
// exists (aegisctl on a host with the package: `sudo aegis edge status` finds the
// daemon without --state-dir), else ~/.aegis/edge. The result is absolute.
func ResolveDir(flag string) (string, error) {
	return ResolveDirWith(flag, Lookup{})
}

// Lookup is what ResolveDirWith consults; a nil or empty field is the process's own
// (os.Getenv, os.UserHomeDir, SystemStateDir). aegisctl passes its injected
// environment, so its tests never depend on the machine they run on.
type Lookup struct {
	Getenv    func(string) string
	HomeDir   func() (string, error)
	SystemDir string
}

// ResolveDirWith is ResolveDir with the environment, home and system directory
// taken from l.
func ResolveDirWith(flag string, l Lookup) (string, error) {
	if l.Getenv == nil {
		l.Getenv = os.Getenv
	}
	if l.HomeDir == nil {
		l.HomeDir = os.UserHomeDir
	}
	if l.SystemDir == "" {
		l.SystemDir = SystemStateDir
	}
	dir := flag
	if dir == "" {
		dir = l.Getenv(EnvStateDir)
	}
	if dir == "" {
		// systemd sets it to the unit's StateDirectory= paths, colon-separated.
		dir, _, _ = strings.Cut(l.Getenv("STATE_DIRECTORY"), ":")
	}
	if dir == "" {
		if fi, err := os.Stat(l.SystemDir); err == nil && fi.IsDir() {
			dir = l.SystemDir
		}
	}
	if dir == "" {
		home, err := l.HomeDir()
		if err != nil || home == "" {
			return "", fmt.Errorf("cannot find the home directory for the default state dir (~/.aegis/edge): %v; pass --state-dir or set %s", err, EnvStateDir)
		}
		dir = filepath.Join(home, ".aegis", "edge")
	}
	return filepath.Abs(dir)
}

func resolveDir(flag string, getenv func(string) string, systemDir string) (string, error) {
	return ResolveDirWith(flag, Lookup{Getenv: getenv, SystemDir: systemDir})
}

// Dir is one state directory.
type Dir struct {
	path string
}

// Open returns the state directory at path without touching the disk.
func Open(path string) *Dir { return &Dir{path: filepath.Clean(path)} }

// Create makes the directory (and missing parents) with mode 0700 if it does not
// exist. An existing directory's mode is left alone: CheckPermissions decides whether
// it is acceptable, as ssh does, rather than silently "fixing" it.
func (d *Dir) Create() error {
	if err := os.MkdirAll(d.path, DirMode); err != nil {
		return fmt.Errorf("create state dir %s: %w", d.path, err)
	}
	return nil
}

// Path is the directory itself.
func (d *Dir) Path() string { return d.path }

// File is the path of name inside the directory.
func (d *Dir) File(name string) string { return filepath.Join(d.path, name) }

// Tenant as recorded in node.json.
type Tenant struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// Node is node.json: the enrolled identity's public facts. Its presence marks a
// completed enrollment (it is written last).
type Node struct {
	NodeID     string    `json:"node_id"`
	Tenant     Tenant    `json:"tenant"`
	ServerURL  string    `json:"server_url"`
	Name       string    `json:"name"`
	EnrolledAt time.Time `json:"enrolled_at"`
}

// Identity is everything an enrolled host holds.
type Identity struct {
	Node  Node
	Key   ed25519.PrivateKey
	Token string
	// CAPEM is ca.crt as stored; CA is its parsed certificate.
	CAPEM []byte
	CA    *x509.Certificate
}

// Enrolled reports whether node.json exists.
func (d *Dir) Enrolled() (bool, error) {
	_, err := os.Stat(d.File(NodeFile))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("stat %s: %w", d.File(NodeFile), err)
	}
}

// ReadNode reads node.json; ErrNotEnrolled when it is absent.
func (d *Dir) ReadNode() (Node, error) {
	raw, err := os.ReadFile(d.File(NodeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Node{}, fmt.Errorf("%w (no %s)", ErrNotEnrolled, d.File(NodeFile))
	}
	if err != nil {
		return Node{}, fmt.Errorf("read %s: %w", d.File(NodeFile), err)
	}
	var n Node
	if err := json.Unmarshal(raw, &n); err != nil {
		return Node{}, fmt.Errorf("%s is corrupt: %w", d.File(NodeFile), err)
	}
	if n.NodeID == "" || n.ServerURL == "" {
		return Node{}, fmt.Errorf("%s is corrupt: node_id and server_url are required", d.File(NodeFile))
	}
	return n, nil
}

// ReadToken reads node.token.
func (d *Dir) ReadToken() (string, error) {
	raw, err := os.ReadFile(d.File(TokenFile))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", d.File(TokenFile), err)
	}
	tok := string(trimSpace(raw))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", d.File(TokenFile))
	}
	return tok, nil
}

// ReadKey reads and decodes node.key.
func (d *Dir) ReadKey() (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(d.File(KeyFile))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.File(KeyFile), err)
	}
	key, err := DecodeKey(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.File(KeyFile), err)
	}
	return key, nil
}

// ReadCA reads ca.crt.
func (d *Dir) ReadCA() ([]byte, *x509.Certificate, error) {
	raw, err := os.ReadFile(d.File(CAFile))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", d.File(CAFile), err)
	}
	cert, err := ParseCertPEM(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", d.File(CAFile), err)
	}
	return raw, cert, nil
}

// Load reads the whole identity. ErrNotEnrolled when node.json is absent. It does not
// check permissions: callers that are about to use the key call CheckPermissions first.
func (d *Dir) Load() (*Identity, error) {
	node, err := d.ReadNode()
	if err != nil {
		return nil, err
	}
	key, err := d.ReadKey()
	if err != nil {
		return nil, err
	}
	tok, err := d.ReadToken()
	if err != nil {
		return nil, err
	}
	caPEM, ca, err := d.ReadCA()
	if err != nil {
		return nil, err
	}
	return &Identity{Node: node, Key: key, Token: tok, CAPEM: caPEM, CA: ca}, nil
}

// WriteNode writes node.json atomically.
func (d *Dir) WriteNode(n Node) error {
	raw, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return fmt.Errorf("encode node.json: %w", err)
	}
	return d.WriteFile(NodeFile, append(raw, '\n'))
}

// WriteToken writes node.token atomically. Callers hold Lock.
func (d *Dir) WriteToken(token string) error {
	return d.WriteFile(TokenFile, []byte(token+"\n"))
}

// WriteKey writes key as PKCS#8 PEM to name atomically. Callers hold Lock.
func (d *Dir) WriteKey(name string, key ed25519.PrivateKey) error {
	raw, err := EncodeKey(key)
	if err != nil {
		return err
	}
	return d.WriteFile(name, raw)
}

// EncodeKey is the PKCS#8 "PRIVATE KEY" PEM form of key.
func EncodeKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// DecodeKey parses a PKCS#8 PEM Ed25519 private key. Errors never include key bytes.
func DecodeKey(raw []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM \"PRIVATE KEY\" block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("not a valid PKCS#8 private key")
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want Ed25519", k)
	}
	return key, nil
}

// ParseCertPEM parses the first CERTIFICATE block of raw.
func ParseCertPEM(raw []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM CERTIFICATE")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}

// EncodeCertPEM is the PEM form of a DER certificate.
func EncodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// Revocation is the marker edged leaves when the control plane tells it, for good,
// that its identity is gone, so that `status` still says Revoked after a restart and
// the daemon does not hammer the server with a dead identity.
type Revocation struct {
	NodeID string    `json:"node_id"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// WriteRevoked records the marker. Callers hold Lock.
func (d *Dir) WriteRevoked(r Revocation) error {
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", RevokedFile, err)
	}
	return d.WriteFile(RevokedFile, append(raw, '\n'))
}

// ReadRevoked returns the marker; ok is false when there is none.
func (d *Dir) ReadRevoked() (r Revocation, ok bool, err error) {
	raw, err := os.ReadFile(d.File(RevokedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Revocation{}, false, nil
	}
	if err != nil {
		return Revocation{}, false, fmt.Errorf("read %s: %w", d.File(RevokedFile), err)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return Revocation{}, false, fmt.Errorf("%s is corrupt: %w", d.File(RevokedFile), err)
	}
	return r, true, nil
}

// IdentityFiles are the files an enrollment creates, in the order it writes them
// (node.json last: its presence marks a complete enrollment).
var IdentityFiles = []string{CAFile, KeyFile, TokenFile, NodeFile}

// RemoveIdentity deletes node.json first (so a crash half way leaves an unenrolled
// directory, never a half identity), then the other identity files, any rotation in
// progress, the archived keys and the revocation marker: after it the directory holds
// no key material and the host can enroll again. Missing files are fine. Callers hold
// Lock.
func (d *Dir) RemoveIdentity() error {
	names := []string{NodeFile, TokenFile, KeyFile, TokenNextFile, KeyNextFile, RotationFile, CAFile, RevokedFile, ArchiveIndexFile}
	var errs []error
	for _, n := range names {
		if err := os.Remove(d.File(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(d.File(ArchiveDir)); err != nil {
		errs = append(errs, err)
	}
	if err := d.RemoveTemps(); err != nil {
		errs = append(errs, err)
	}
	if err := syncDir(d.path); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}
