-- Initial schema.
--
-- Times are INTEGER microseconds since the Unix epoch, UTC; NULL is the zero
-- time.Time ("never"). Byte strings are BLOBs. Tags and audit details are JSON text.
-- Tables are STRICT so a wrongly typed value is an error, not a silent conversion.

CREATE TABLE tenants (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    created_at INTEGER
) STRICT;

CREATE TABLE api_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL REFERENCES tenants (id),
    role        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    secret_hash BLOB    NOT NULL,
    created_at  INTEGER,
    revoked_at  INTEGER
) STRICT;

CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);

CREATE TABLE signing_keys (
    kid         TEXT    NOT NULL PRIMARY KEY,
    private_key BLOB    NOT NULL,
    public_key  BLOB    NOT NULL,
    created_at  INTEGER,
    retired_at  INTEGER
) STRICT;

CREATE TABLE enrollment_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL REFERENCES tenants (id),
    name        TEXT    NOT NULL,
    secret_hash BLOB    NOT NULL,
    tags        TEXT    NOT NULL DEFAULT '[]',
    created_by  TEXT    NOT NULL,
    created_at  INTEGER,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_by     TEXT    NOT NULL DEFAULT '',
    revoked_at  INTEGER
) STRICT;

CREATE INDEX enrollment_tokens_tenant_created ON enrollment_tokens (tenant_id, created_at);

CREATE TABLE edge_daemons (
    node_id             TEXT    NOT NULL PRIMARY KEY,
    tenant_id           TEXT    NOT NULL REFERENCES tenants (id),
    display_name        TEXT    NOT NULL,
    tags                TEXT    NOT NULL DEFAULT '[]',
    os                  TEXT    NOT NULL,
    hostname            TEXT    NOT NULL,
    -- Unique as a second line of defence: daemon_keys is what enforces "never reused".
    public_key          BLOB    NOT NULL UNIQUE,
    previous_public_key BLOB,
    overlap_until       INTEGER,
    status              TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    security_context    TEXT    NOT NULL,
    enrolled_at         INTEGER,
    key_rotated_at      INTEGER,
    last_seen_at        INTEGER,
    revoked_at          INTEGER,
    -- The live stream; session_id is '' when none is open.
    session_id          TEXT    NOT NULL DEFAULT '',
    session_replica     TEXT    NOT NULL DEFAULT '',
    session_since       INTEGER
) STRICT;

CREATE INDEX edge_daemons_tenant ON edge_daemons (tenant_id);
CREATE INDEX edge_daemons_session_replica ON edge_daemons (session_replica) WHERE session_id <> '';

-- Every public key any daemon ever held. No foreign key: a claim must outlive the
-- daemon, so a deleted host's key can never be enrolled again.
CREATE TABLE daemon_keys (
    key        BLOB    NOT NULL PRIMARY KEY,
    node_id    TEXT    NOT NULL,
    claimed_at INTEGER
) STRICT, WITHOUT ROWID;

CREATE TABLE node_tokens (
    jti             TEXT    NOT NULL PRIMARY KEY,
    node_id         TEXT    NOT NULL,
    key_fingerprint TEXT    NOT NULL,
    issued_at       INTEGER,
    expires_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX node_tokens_node ON node_tokens (node_id, expires_at);

CREATE TABLE token_blacklist (
    jti        TEXT    NOT NULL PRIMARY KEY,
    node_id    TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    added_at   INTEGER
) STRICT;

CREATE INDEX token_blacklist_expires ON token_blacklist (expires_at);

CREATE TABLE attest_nonces (
    value      TEXT    NOT NULL PRIMARY KEY,
    node_id    TEXT    NOT NULL,
    purpose    TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE INDEX attest_nonces_expires ON attest_nonces (expires_at);

CREATE TABLE rotations (
    rotation_id     TEXT    NOT NULL PRIMARY KEY,
    node_id         TEXT    NOT NULL,
    old_fingerprint TEXT    NOT NULL,
    new_fingerprint TEXT    NOT NULL,
    new_token_jti   TEXT    NOT NULL,
    new_token       TEXT    NOT NULL,
    at              INTEGER
) STRICT;

-- AUTOINCREMENT so an id is never reused, even after the newest rows are deleted:
-- readers page through the log by id.
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    tenant_id TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    node_id   TEXT    NOT NULL,
    result    TEXT    NOT NULL,
    details   TEXT    NOT NULL DEFAULT '{}',
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
