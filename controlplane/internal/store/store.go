// Package store owns the control plane's durable state: the Store interface that every
// domain package talks to, the records it holds, and the sentinel errors both
// implementations (sqlite, postgres) return. Domain rules live in the domain packages;
// a store only guarantees that each call is atomic and that conditional updates are
// real compare-and-swaps, so that rules checked inside InTx hold at commit.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Implementations wrap them with context (%w); callers use errors.Is.
var (
	// ErrNotFound: no row matched (also returned for rows of another tenant when the
	// call is tenant-scoped, so existence never leaks across tenants).
	ErrNotFound = errors.New("not found")
	// ErrConflict: a compare-and-swap lost (the row was not in the expected state) or a
	// unique key already exists.
	ErrConflict = errors.New("conflict")
	// ErrKeyInUse: a public key has already been claimed by some daemon, now or ever.
	ErrKeyInUse = errors.New("public key already in use")
	// ErrTokenUsed, ErrTokenExpired, ErrTokenRevoked: why an enrollment token could not
	// be consumed.
	ErrTokenUsed    = errors.New("enrollment token already used")
	ErrTokenExpired = errors.New("enrollment token expired")
	ErrTokenRevoked = errors.New("enrollment token revoked")
)

// Daemon status values as stored. Connected/Disconnected are derived from the session
// columns at read time, never stored.
const (
	DaemonActive  = "active"
	DaemonRevoked = "revoked"
)

// Tenant kinds.
const (
	TenantPersonal = "personal"
	TenantTeam     = "team"
)

// Operator roles.
const (
	RoleAdmin    = "admin"
	RoleOperator = "operator"
	RoleViewer   = "viewer"
)

type Tenant struct {
	ID        string
	Name      string
	Kind      string // TenantPersonal or TenantTeam
	CreatedAt time.Time
}

// APIToken is an operator's bearer credential. Only the SHA-256 of its secret is kept.
type APIToken struct {
	ID         string
	TenantID   string
	Role       string
	Name       string
	SecretHash []byte
	CreatedAt  time.Time
	RevokedAt  time.Time // zero when active
}

// SigningKey is one of the control plane's own Ed25519 token-signing keys.
type SigningKey struct {
	KID        string
	PrivateKey []byte // ed25519.PrivateKey (64 bytes)
	PublicKey  []byte // ed25519.PublicKey (32 bytes)
	CreatedAt  time.Time
	RetiredAt  time.Time // zero while it is the active signer; kept for verification after
}

// EnrollmentToken is a single-use credential a host redeems to enroll. Only the
// SHA-256 of its secret is kept.
type EnrollmentToken struct {
	ID         string
	TenantID   string
	Name       string
	SecretHash []byte
	Tags       []string
	CreatedBy  string // api token id of the operator who made it
	CreatedAt  time.Time
	ExpiresAt  time.Time
	UsedAt     time.Time // zero until consumed
	UsedBy     string    // node_id that consumed it
	RevokedAt  time.Time // zero unless revoked
}

// Daemon is one enrolled host (the edge_daemons row).
type Daemon struct {
	NodeID            string
	TenantID          string
	DisplayName       string
	Tags              []string
	OS                string
	Hostname          string
	PublicKey         []byte
	PreviousPublicKey []byte    // nil when no rotation happened or the overlap is over
	OverlapUntil      time.Time // zero when no overlap
	Status            string    // DaemonActive or DaemonRevoked
	SecurityContext   string
	// SecurityContextVersion starts at 0 and is bumped by every
	// SetDaemonSecurityContext; tokens carry it (claim sctxv). InsertDaemon ignores it.
	SecurityContextVersion int64
	EnrolledAt             time.Time
	KeyRotatedAt           time.Time // zero until the first rotation
	LastSeenAt             time.Time // zero until first heartbeat
	RevokedAt              time.Time
	// Session: the live stream, if any. SessionID is empty when no stream is open.
	SessionID      string
	SessionReplica string
	SessionSince   time.Time
	// LocalMaxKeyAge is the host's own rotation.max_key_age as its latest Hello
	// reported it (0: none, or never reported). InsertDaemon ignores it.
	LocalMaxKeyAge time.Duration
}

// KeySince is when the daemon's current key was made: its last rotation, else its
// enrollment. A key's age is counted from here.
func (d Daemon) KeySince() time.Time {
	if !d.KeyRotatedAt.IsZero() {
		return d.KeyRotatedAt
	}
	return d.EnrolledAt
}

// RotationPolicy is a tenant's named rule for routine rotation: hosts its Target
// selects must not keep a key older than MaxKeyAge.
type RotationPolicy struct {
	TenantID  string
	Name      string
	Target    string // a selector, in canonical form
	MaxKeyAge time.Duration
	CreatedAt time.Time
	UpdatedAt time.Time
	UpdatedBy string // actor of the last change
}

// NodeToken records every NodeSecurityToken issued.
type NodeToken struct {
	JTI            string
	NodeID         string
	KeyFingerprint string
	IssuedAt       time.Time
	ExpiresAt      time.Time
}

// BlacklistEntry: a token that must never be accepted again although unexpired.
type BlacklistEntry struct {
	JTI       string
	NodeID    string
	Reason    string // "rotated", "refreshed", "revoked", "logout"
	ExpiresAt time.Time
	AddedAt   time.Time
}

// Nonce is a single-use server challenge.
type Nonce struct {
	Value     string
	NodeID    string // empty for enrollment challenges
	Purpose   string // "enroll", "attest", ...
	ExpiresAt time.Time
}

// Rotation is the durable outcome of one key rotation, keyed by the client-made id,
// so a retried request gets the same answer.
type Rotation struct {
	RotationID     string
	NodeID         string
	OldFingerprint string
	NewFingerprint string
	NewTokenJTI    string
	NewToken       string
	At             time.Time
}

// RotationWrite is everything one key rotation writes (Store.ApplyRotation).
type RotationWrite struct {
	NodeID       string
	OldKey       []byte // the key the swap replaces (compare-and-swap)
	NewKey       []byte
	OverlapUntil time.Time
	At           time.Time
	Blacklist    BlacklistEntry // the old token, withdrawn
	Token        NodeToken      // the new token, bound to NewKey
	Rotation     Rotation
	Audit        AuditEntry
}

// AuditEntry is one line of the audit trail.
type AuditEntry struct {
	ID       int64 // assigned by the store
	At       time.Time
	TenantID string
	Actor    string // "op:<api token id>", "node:<node id>", "system"
	Action   string // "enroll", "rotate", "refresh", "revoke", ...
	NodeID   string
	Result   string // "ok" or an error reason
	Details  map[string]string
	PrevHash string
	Hash     string
}

// Fleet run states as stored.
const (
	FleetRunRunning   = "running"
	FleetRunSucceeded = "succeeded"
	FleetRunFailed    = "failed"
	FleetRunCancelled = "cancelled"
)

// Fleet run host states as stored.
const (
	FleetHostPending    = "pending"
	FleetHostRunning    = "running"
	FleetHostSucceeded  = "succeeded"
	FleetHostFailed     = "failed"
	FleetHostSkipped    = "skipped"
	FleetHostNotStarted = "not_started"
)

// FleetRun is one durable fleet run (DESIGN.md §4). The store keeps the spec and the
// events as the fleet package encodes them and never interprets either.
type FleetRun struct {
	ID       string
	TenantID string
	Action   string // "keys.rotate", "token.refresh", "cmd.run"
	// Target is the selector in canonical form.
	Target       string
	Spec         string // encoded by the fleet package
	State        string // FleetRun*
	HaltedReason string
	CreatedBy    string // api token id
	CreatedAt    time.Time
	FinishedAt   time.Time // zero while running
	// CancelRequestedAt is set by CancelFleetRun; the driver acts on it.
	CancelRequestedAt time.Time
	// The lease: which replica drives the run, until when. Empty/zero when free.
	LeaseOwner string
	LeaseUntil time.Time
}

// FleetRunHost is one host of a run, in plan order (Position from 0).
type FleetRunHost struct {
	RunID    string
	NodeID   string
	Name     string
	Wave     int // from 1
	Position int
	State    string // FleetHost*
	Reason   string
	Message  string
	ExitCode int32
	// What the host's stream presented when its action started, so a resumed run
	// can tell whether the action already took effect.
	StartKeyFingerprint string
	StartTokenJTI       string
	StartedAt           time.Time
	FinishedAt          time.Time
}

// FleetRunEvent is one line of a run's history, numbered from 1 per run.
type FleetRunEvent struct {
	RunID    string
	Sequence uint64 // assigned by AppendFleetRunEvent
	At       time.Time
	Kind     string // "run_started", "wave_started", "host_result", "run_finished"
	Data     string // encoded by the fleet package
}

// FleetRunFilter narrows ListFleetRuns. Empty fields do not filter.
type FleetRunFilter struct {
	TenantID string
	State    string
}

// DaemonFilter narrows ListDaemons. Empty fields do not filter.
type DaemonFilter struct {
	TenantID string
}

// Tx is every operation; inside InTx they share one transaction, outside each call is
// its own transaction.
type Tx interface {
	CreateTenant(ctx context.Context, t Tenant) error // ErrConflict if the id exists
	GetTenant(ctx context.Context, id string) (Tenant, error)
	ListTenants(ctx context.Context) ([]Tenant, error)

	CreateAPIToken(ctx context.Context, t APIToken) error
	GetAPIToken(ctx context.Context, id string) (APIToken, error)
	// ListAPITokens lists the tokens of a tenant ("" = all tenants).
	ListAPITokens(ctx context.Context, tenantID string) ([]APIToken, error)
	RevokeAPIToken(ctx context.Context, id string, at time.Time) error

	InsertSigningKey(ctx context.Context, k SigningKey) error
	// ListSigningKeys returns every key, newest first.
	ListSigningKeys(ctx context.Context) ([]SigningKey, error)
	RetireSigningKey(ctx context.Context, kid string, at time.Time) error
	// DeleteSigningKeysRetiredBefore deletes the keys retired before cutoff and
	// returns their kids; a key never retired (the active signer) is never deleted.
	DeleteSigningKeysRetiredBefore(ctx context.Context, cutoff time.Time) ([]string, error)

	CreateEnrollmentToken(ctx context.Context, t EnrollmentToken) error
	GetEnrollmentToken(ctx context.Context, id string) (EnrollmentToken, error)
	// ListEnrollmentTokens lists a tenant's tokens ("" = all), newest first.
	ListEnrollmentTokens(ctx context.Context, tenantID string) ([]EnrollmentToken, error)
	// RevokeEnrollmentToken: tenantID "" means any tenant. ErrNotFound if no such token
	// in that tenant.
	RevokeEnrollmentToken(ctx context.Context, tenantID, id string, at time.Time) error
	// ConsumeEnrollmentToken marks the token used by nodeID, atomically, only if it is
	// unused, unrevoked and unexpired at `now`; else ErrTokenUsed, ErrTokenRevoked,
	// ErrTokenExpired or ErrNotFound.
	ConsumeEnrollmentToken(ctx context.Context, id, nodeID string, now time.Time) error

	// ClaimPublicKey records that key belongs to nodeID forever. ErrKeyInUse if any
	// daemon (this one included) ever claimed it.
	ClaimPublicKey(ctx context.Context, key []byte, nodeID string, at time.Time) error
	// KeyOwner returns the node that claimed key (the claim outlives the daemon).
	// ErrNotFound if no daemon ever claimed it.
	KeyOwner(ctx context.Context, key []byte) (string, error)
	// InsertDaemon: ErrConflict if node_id exists. Does not claim the key.
	InsertDaemon(ctx context.Context, d Daemon) error
	GetDaemon(ctx context.Context, nodeID string) (Daemon, error)
	ListDaemons(ctx context.Context, f DaemonFilter) ([]Daemon, error)
	// SwapDaemonKey is the rotation compare-and-swap: only if the current public_key
	// equals oldKey and status is active, set public_key=newKey,
	// previous_public_key=oldKey, overlap_until, key_rotated_at=at. Else ErrConflict
	// (ErrNotFound if no such node).
	SwapDaemonKey(ctx context.Context, nodeID string, oldKey, newKey []byte, overlapUntil, at time.Time) error
	// RevokeDaemon sets status revoked (idempotent). ErrNotFound if no such node.
	RevokeDaemon(ctx context.Context, nodeID string, at time.Time) error
	DeleteDaemon(ctx context.Context, nodeID string) error
	UpdateDaemonTags(ctx context.Context, nodeID string, tags []string) error
	// SetDaemonSecurityContext assigns the context and bumps its version by one, even
	// when the name is unchanged. ErrNotFound if no such node.
	SetDaemonSecurityContext(ctx context.Context, nodeID, name string) error
	// SetDaemonLocalMaxKeyAge records the host's own maximum key age (0: none), as its
	// latest Hello reported it; kept across sessions, at millisecond precision.
	// ErrNotFound if no such node.
	SetDaemonLocalMaxKeyAge(ctx context.Context, nodeID string, max time.Duration) error
	// OpenSession records a live stream (replacing any previous one).
	OpenSession(ctx context.Context, nodeID, sessionID, replica string, at time.Time) error
	// CloseSession clears the session only if it is still sessionID.
	CloseSession(ctx context.Context, nodeID, sessionID string) error
	// CloseReplicaSessions clears every session held by replica (on shutdown/start).
	CloseReplicaSessions(ctx context.Context, replica string) error
	// TouchLastSeen sets last_seen_at for many nodes at once (batched heartbeats); it
	// never moves a timestamp backwards.
	TouchLastSeen(ctx context.Context, seen map[string]time.Time) error

	InsertNodeToken(ctx context.Context, t NodeToken) error
	GetNodeToken(ctx context.Context, jti string) (NodeToken, error)
	// ActiveNodeTokens: tokens of nodeID with expires_at > now that are not blacklisted.
	ActiveNodeTokens(ctx context.Context, nodeID string, now time.Time) ([]NodeToken, error)

	// BlacklistToken is idempotent (a second insert of one jti is not an error).
	BlacklistToken(ctx context.Context, e BlacklistEntry) error
	IsBlacklisted(ctx context.Context, jti string) (bool, error)
	// ListBlacklist returns entries with expires_at > now (to warm an in-memory cache).
	ListBlacklist(ctx context.Context, now time.Time) ([]BlacklistEntry, error)
	// PurgeBlacklist deletes entries whose token expired before now; returns how many.
	PurgeBlacklist(ctx context.Context, now time.Time) (int, error)
	CountBlacklist(ctx context.Context) (int, error)

	InsertNonce(ctx context.Context, n Nonce) error
	// ConsumeNonce deletes and returns the nonce if it exists and has not expired at
	// now; ErrNotFound otherwise (a second consume of one nonce is ErrNotFound).
	ConsumeNonce(ctx context.Context, value string, now time.Time) (Nonce, error)
	PurgeNonces(ctx context.Context, now time.Time) (int, error)

	// InsertRotation: ErrConflict if rotation_id exists.
	InsertRotation(ctx context.Context, r Rotation) error
	GetRotation(ctx context.Context, rotationID string) (Rotation, error)
	// ListNodeRotations lists a node's rotations, oldest first.
	ListNodeRotations(ctx context.Context, nodeID string) ([]Rotation, error)

	// InsertFleetRun: ErrConflict if the id exists, ErrNotFound if the tenant does
	// not. Its hosts and first event are inserted in the same transaction (InTx).
	InsertFleetRun(ctx context.Context, r FleetRun) error
	// InsertFleetRunHosts adds hosts to run runID (their RunID is ignored), as given.
	// ErrNotFound if no such run; ErrConflict if a host is already in the run.
	InsertFleetRunHosts(ctx context.Context, runID string, hosts []FleetRunHost) error
	GetFleetRun(ctx context.Context, id string) (FleetRun, error)
	// ListFleetRuns lists runs, newest first.
	ListFleetRuns(ctx context.Context, f FleetRunFilter) ([]FleetRun, error)
	// ListFleetRunHosts lists a run's hosts in plan order (empty for no such run).
	ListFleetRunHosts(ctx context.Context, runID string) ([]FleetRunHost, error)
	// UpdateFleetRunHost writes every mutable field of h (state, reason, message,
	// exit code, start fingerprint and jti, times) only if the host is still in
	// state from; else ErrConflict (ErrNotFound if no such host).
	UpdateFleetRunHost(ctx context.Context, h FleetRunHost, from string) error
	// FinishFleetRun sets a running run's final state, halted reason and finish
	// time and frees its lease. ErrConflict if it is not running.
	FinishFleetRun(ctx context.Context, id, state, haltedReason string, at time.Time) error
	// RequestFleetRunCancel records a cancel (the first one's time wins) on a
	// running run. ErrConflict if it is not running, ErrNotFound if no such run.
	RequestFleetRunCancel(ctx context.Context, id string, at time.Time) error
	// AcquireFleetRunLease takes or renews the lease of a running run for owner
	// until `until`, only if the lease is free, expired at now, or already owner's.
	// ErrConflict otherwise (also for a finished run); ErrNotFound if no such run.
	AcquireFleetRunLease(ctx context.Context, id, owner string, now, until time.Time) error
	// ReleaseFleetRunLease frees the lease if owner holds it (idempotent).
	ReleaseFleetRunLease(ctx context.Context, id, owner string) error
	// AppendFleetRunEvent numbers e after the run's last event and stores it.
	// ErrNotFound if no such run.
	AppendFleetRunEvent(ctx context.Context, e FleetRunEvent) (FleetRunEvent, error)
	// ListFleetRunEvents lists the run's events with sequence > after, in order.
	ListFleetRunEvents(ctx context.Context, runID string, after uint64) ([]FleetRunEvent, error)

	// PutRotationPolicy creates the policy (tenant, name) or replaces its target, max
	// age, update time and updater (created_at is kept). ErrNotFound if no such tenant.
	PutRotationPolicy(ctx context.Context, p RotationPolicy) error
	GetRotationPolicy(ctx context.Context, tenantID, name string) (RotationPolicy, error)
	// ListRotationPolicies lists a tenant's policies ("" = all) by tenant, then name.
	ListRotationPolicies(ctx context.Context, tenantID string) ([]RotationPolicy, error)
	// DeleteRotationPolicy: ErrNotFound if the tenant has no policy of that name.
	DeleteRotationPolicy(ctx context.Context, tenantID, name string) error

	// AppendAudit records e in the caller's transaction (it commits or rolls back with
	// the change it describes) and puts it on the hash chain: ID (the last entry's +
	// 1), PrevHash (the last entry's Hash) and Hash (audit.Seal) are assigned, and At
	// if zero. A store may seal entries after the commit, in commit order, so that
	// audited transactions never wait for each other (PostgreSQL does; SQLite, with
	// one writer, seals at once): inside a transaction the returned entry may then lack
	// ID and hashes, while Store.AppendAudit returns it sealed. One transaction's
	// entries stay adjacent on the chain.
	AppendAudit(ctx context.Context, e AuditEntry) (AuditEntry, error)
	// ListAudit lists a tenant's entries ("" = all), oldest first, after afterID. On
	// a Store it covers every committed entry (sealing what is pending first).
	ListAudit(ctx context.Context, tenantID string, afterID int64, limit int) ([]AuditEntry, error)
	// ListNodeAudit is ListAudit for one node's entries.
	ListNodeAudit(ctx context.Context, tenantID, nodeID string, afterID int64, limit int) ([]AuditEntry, error)

	// KeepSessions re-asserts the streams replica holds: each node's session row is
	// set to the given one unless it already is, or it records a stream opened
	// later (the newest stream wins). It returns how many rows it changed. It heals
	// a row cleared or overwritten by a delayed write of an older stream.
	KeepSessions(ctx context.Context, replica string, live []LiveSession) (int, error)
}

// LiveSession is one stream a replica holds, for KeepSessions.
type LiveSession struct {
	NodeID    string
	SessionID string
	Since     time.Time
}

// Store is a Tx that can also open transactions.
type Store interface {
	Tx
	// InTx runs fn in one transaction: committed if fn returns nil, rolled back
	// otherwise (fn's error is returned unchanged, so errors.Is works).
	InTx(ctx context.Context, fn func(tx Tx) error) error
	// ApplyRotation makes a rotation's writes, each as its own method makes it and in
	// this order: ClaimPublicKey(NewKey), SwapDaemonKey, BlacklistToken,
	// InsertNodeToken, InsertRotation and AppendAudit, in a transaction of their
	// own; but only if every one of them succeeds, and then it reports true. If any
	// would fail, it writes none of them and reports false with a nil error: the
	// caller makes them one at a time, in a transaction, to learn which failed and
	// why. PostgreSQL runs them as one statement (one round trip, which commits); err
	// is a failure of the database itself.
	ApplyRotation(ctx context.Context, w RotationWrite) (applied bool, err error)
	// Ping checks the database answers (for /readyz).
	Ping(ctx context.Context) error
	Close() error
}
