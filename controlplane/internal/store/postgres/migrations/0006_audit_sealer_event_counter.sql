-- Audited transactions no longer take a lock to append to the hash chain: each one
-- inserts its entries here, concurrently, in its own transaction, and the sealer
-- (audit.go) moves committed entries onto the chain in batches, under a lock held
-- only by its own short transaction. tx_group keeps one transaction's entries
-- adjacent on the chain.
CREATE TABLE audit_pending (
    pid       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_group  bigint      NOT NULL,
    at        timestamptz NOT NULL,
    tenant_id text        NOT NULL,
    actor     text        NOT NULL,
    action    text        NOT NULL,
    node_id   text        NOT NULL,
    result    text        NOT NULL,
    details   jsonb       NOT NULL DEFAULT '{}'
);

-- Which pending entry a chain entry was sealed from (not covered by the hash: it
-- only lets Store.AppendAudit return the entry it wrote).
ALTER TABLE audit_log ADD COLUMN pending_id bigint;
CREATE UNIQUE INDEX audit_log_pending_id ON audit_log (pending_id) WHERE pending_id IS NOT NULL;

-- Fleet run events are numbered from a counter on the run's row: the UPDATE that
-- takes the next number locks the row until commit, so concurrent appenders wait
-- their turn (never fail) and numbers become visible in order.
ALTER TABLE fleet_runs ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;
UPDATE fleet_runs AS r
SET event_seq = coalesce((SELECT max(e.sequence) FROM fleet_run_events AS e WHERE e.run_id = r.id), 0);
