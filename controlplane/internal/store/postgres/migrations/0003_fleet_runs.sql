-- Fleet runs (DESIGN.md §4): the run, its hosts in plan order, and its numbered
-- event history, which watchers replay. The spec and event data are JSON written by
-- the fleet package. A run's lease says which replica drives it; lease_until lets
-- another replica (or this one after a restart) take over a run whose driver died.
-- Hosts are not foreign keys to edge_daemons: a run's record outlives a deleted host.

CREATE TABLE fleet_runs (
    id                  text        NOT NULL PRIMARY KEY,
    tenant_id           text        NOT NULL REFERENCES tenants (id),
    action              text        NOT NULL,
    target              text        NOT NULL,
    spec                text        NOT NULL,
    state               text        NOT NULL,
    halted_reason       text        NOT NULL DEFAULT '',
    created_by          text        NOT NULL,
    created_at          timestamptz,
    finished_at         timestamptz,
    cancel_requested_at timestamptz,
    lease_owner         text        NOT NULL DEFAULT '',
    lease_until         timestamptz
);

CREATE INDEX fleet_runs_tenant ON fleet_runs (tenant_id, created_at);
CREATE INDEX fleet_runs_state ON fleet_runs (state);

CREATE TABLE fleet_run_hosts (
    run_id                text        NOT NULL REFERENCES fleet_runs (id),
    node_id               text        NOT NULL,
    name                  text        NOT NULL,
    wave                  integer     NOT NULL,
    position              integer     NOT NULL,
    state                 text        NOT NULL,
    reason                text        NOT NULL DEFAULT '',
    message               text        NOT NULL DEFAULT '',
    exit_code             integer     NOT NULL DEFAULT 0,
    start_key_fingerprint text        NOT NULL DEFAULT '',
    start_token_jti       text        NOT NULL DEFAULT '',
    started_at            timestamptz,
    finished_at           timestamptz,
    PRIMARY KEY (run_id, node_id)
);

CREATE TABLE fleet_run_events (
    run_id   text        NOT NULL REFERENCES fleet_runs (id),
    sequence bigint      NOT NULL,
    at       timestamptz NOT NULL,
    kind     text        NOT NULL,
    data     text        NOT NULL,
    PRIMARY KEY (run_id, sequence)
);

-- A node's rotations, for reconciling a fleet run resumed mid-rotation.
CREATE INDEX rotations_node ON rotations (node_id, at);
