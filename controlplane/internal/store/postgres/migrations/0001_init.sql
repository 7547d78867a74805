-- Initial schema; the same tables and rules as the SQLite store's 0001_init.sql.
--
-- Times are timestamptz (microsecond precision); NULL is the zero time.Time
-- ("never"). Byte strings are bytea. Tags are text[] (ordered, never NULL); audit
-- details are a jsonb object. Table names are never schema-qualified: the store lives
-- in whatever schema the connection's search_path selects.

CREATE TABLE tenants (
    id         text        NOT NULL PRIMARY KEY,
    name       text        NOT NULL,
    kind       text        NOT NULL,
    created_at timestamptz
);

CREATE TABLE api_tokens (
    id          text        NOT NULL PRIMARY KEY,
    tenant_id   text        NOT NULL REFERENCES tenants (id),
    role        text        NOT NULL,
    name        text        NOT NULL,
    secret_hash bytea       NOT NULL,
    created_at  timestamptz,
    revoked_at  timestamptz
);

CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);

CREATE TABLE signing_keys (
    kid         text        NOT NULL PRIMARY KEY,
    private_key bytea       NOT NULL,
    public_key  bytea       NOT NULL,
    created_at  timestamptz,
    retired_at  timestamptz
);

CREATE TABLE enrollment_tokens (
    id          text        NOT NULL PRIMARY KEY,
    tenant_id   text        NOT NULL REFERENCES tenants (id),
    name        text        NOT NULL,
    secret_hash bytea       NOT NULL,
    tags        text[]      NOT NULL DEFAULT '{}',
    created_by  text        NOT NULL,
    created_at  timestamptz,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    used_by     text        NOT NULL DEFAULT '',
    revoked_at  timestamptz
);

CREATE INDEX enrollment_tokens_tenant_created ON enrollment_tokens (tenant_id, created_at);

CREATE TABLE edge_daemons (
    node_id             text        NOT NULL PRIMARY KEY,
    tenant_id           text        NOT NULL REFERENCES tenants (id),
    display_name        text        NOT NULL,
    tags                text[]      NOT NULL DEFAULT '{}',
    os                  text        NOT NULL,
    hostname            text        NOT NULL,
    -- Unique as a second line of defence: daemon_keys is what enforces "never reused".
    public_key          bytea       NOT NULL UNIQUE,
    previous_public_key bytea,
    overlap_until       timestamptz,
    status              text        NOT NULL CHECK (status IN ('active', 'revoked')),
    security_context    text        NOT NULL,
    enrolled_at         timestamptz,
    key_rotated_at      timestamptz,
    last_seen_at        timestamptz,
    revoked_at          timestamptz,
    -- The live stream; session_id is '' when none is open.
    session_id          text        NOT NULL DEFAULT '',
    session_replica     text        NOT NULL DEFAULT '',
    session_since       timestamptz
);

CREATE INDEX edge_daemons_tenant ON edge_daemons (tenant_id);
CREATE INDEX edge_daemons_session_replica ON edge_daemons (session_replica) WHERE session_id <> '';

-- Every public key any daemon ever held. No foreign key: a claim must outlive the
-- daemon, so a deleted host's key can never be enrolled again.
CREATE TABLE daemon_keys (
    key        bytea       NOT NULL PRIMARY KEY,
    node_id    text        NOT NULL,
    claimed_at timestamptz
);

CREATE TABLE node_tokens (
    jti             text        NOT NULL PRIMARY KEY,
    node_id         text        NOT NULL,
    key_fingerprint text        NOT NULL,
    issued_at       timestamptz,
    expires_at      timestamptz NOT NULL
);

CREATE INDEX node_tokens_node ON node_tokens (node_id, expires_at);

CREATE TABLE token_blacklist (
    jti        text        NOT NULL PRIMARY KEY,
    node_id    text        NOT NULL,
    reason     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    added_at   timestamptz
);

CREATE INDEX token_blacklist_expires ON token_blacklist (expires_at);

CREATE TABLE attest_nonces (
    value      text        NOT NULL PRIMARY KEY,
    node_id    text        NOT NULL,
    purpose    text        NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX attest_nonces_expires ON attest_nonces (expires_at);

CREATE TABLE rotations (
    rotation_id     text        NOT NULL PRIMARY KEY,
    node_id         text        NOT NULL,
    old_fingerprint text        NOT NULL,
    new_fingerprint text        NOT NULL,
    new_token_jti   text        NOT NULL,
    new_token       text        NOT NULL,
    at              timestamptz
);

-- A sequence never hands out an id twice, even after the newest rows are deleted:
-- readers page through the log by id. AppendAudit takes a lock so that ids also
-- become visible in order (see audit.go).
CREATE TABLE audit_log (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL,
    tenant_id text        NOT NULL,
    actor     text        NOT NULL,
    action    text        NOT NULL,
    node_id   text        NOT NULL,
    result    text        NOT NULL,
    details   jsonb       NOT NULL DEFAULT '{}',
    prev_hash text        NOT NULL,
    hash      text        NOT NULL
);

CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
