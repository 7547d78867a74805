-- Fleet runs (DESIGN.md §4): the run, its hosts in plan order, and its numbered
-- event history, which watchers replay. The spec and event data are JSON written by
-- the fleet package. A run's lease says which replica drives it; lease_until lets
-- another replica (or this one after a restart) take over a run whose driver died.
-- Hosts are not foreign keys to edge_daemons: a run's record outlives a deleted host.

CREATE TABLE fleet_runs (
    id                  TEXT    NOT NULL PRIMARY KEY,
    tenant_id           TEXT    NOT NULL REFERENCES tenants (id),
    action              TEXT    NOT NULL,
    target              TEXT    NOT NULL,
    spec                TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    halted_reason       TEXT    NOT NULL DEFAULT '',
    created_by          TEXT    NOT NULL,
    created_at          INTEGER,
    finished_at         INTEGER,
    cancel_requested_at INTEGER,
    lease_owner         TEXT    NOT NULL DEFAULT '',
    lease_until         INTEGER
) STRICT;

CREATE INDEX fleet_runs_tenant ON fleet_runs (tenant_id, created_at);
CREATE INDEX fleet_runs_state ON fleet_runs (state);

CREATE TABLE fleet_run_hosts (
    run_id                TEXT    NOT NULL REFERENCES fleet_runs (id),
    node_id               TEXT    NOT NULL,
    name                  TEXT    NOT NULL,
    wave                  INTEGER NOT NULL,
    position              INTEGER NOT NULL,
    state                 TEXT    NOT NULL,
    reason                TEXT    NOT NULL DEFAULT '',
    message               TEXT    NOT NULL DEFAULT '',
    exit_code             INTEGER NOT NULL DEFAULT 0,
    start_key_fingerprint TEXT    NOT NULL DEFAULT '',
    start_token_jti       TEXT    NOT NULL DEFAULT '',
    started_at            INTEGER,
    finished_at           INTEGER,
    PRIMARY KEY (run_id, node_id)
) STRICT;

CREATE TABLE fleet_run_events (
    run_id   TEXT    NOT NULL REFERENCES fleet_runs (id),
    sequence INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    data     TEXT    NOT NULL,
    PRIMARY KEY (run_id, sequence)
) STRICT;

-- A node's rotations, for reconciling a fleet run resumed mid-rotation.
CREATE INDEX rotations_node ON rotations (node_id, at);
