-- Uniqueness the code alone guarded until now, as constraints, so two replicas (or
-- two transactions of one) cannot both pass a check and both insert.
--
-- Tenant names: operators.CreateTenant looked the name up first; two concurrent
-- creates both saw it free. A database that already holds duplicates keeps the
-- oldest tenant's name and renames the others to "<name> (<id>)", so this
-- migration never fails on existing data and no tenant is lost.
UPDATE tenants
SET name = name || ' (' || id || ')'
WHERE EXISTS (
    SELECT 1 FROM tenants AS older
    WHERE older.name = tenants.name
      AND (COALESCE(older.created_at, '-infinity'::timestamptz), older.id) < (COALESCE(tenants.created_at, '-infinity'::timestamptz), tenants.id)
);
CREATE UNIQUE INDEX tenants_name ON tenants (name);

-- Each rotation issues a token of its own; a replay answers the recorded row.
CREATE UNIQUE INDEX rotations_new_token ON rotations (new_token_jti);

-- A host's position is its place in the run's plan order, one host per place.
CREATE UNIQUE INDEX fleet_run_hosts_position ON fleet_run_hosts (run_id, position);

-- Cross-replica notifications from the transaction itself. PostgreSQL delivers a
-- NOTIFY only when the transaction that sent it commits, so a blacklisted token (and
-- with it a revocation or logout, whose rows carry their reason) reaches every
-- listening replica exactly when it becomes true, even if the replica that made the
-- change dies right after its commit. The payload is the broadcast package's
-- Event encoding (kind "blacklisted", one token) on the schema's channel; it
-- carries no origin, so the replica that made the change hears it too and finds
-- the token already known.
CREATE FUNCTION aegis_edge_notify_blacklisted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        left('aegis_edge_' || current_schema(), 63),
        json_build_object(
            'k', 'blacklisted',
            'a', now(),
            't', json_build_array(json_build_object(
                'j', NEW.jti,
                'n', NEW.node_id,
                'r', NEW.reason,
                'e', floor(extract(epoch FROM NEW.expires_at))::bigint,
                'd', COALESCE(floor(extract(epoch FROM NEW.added_at))::bigint, 0)
            ))
        )::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER token_blacklist_notify
    AFTER INSERT ON token_blacklist
    FOR EACH ROW EXECUTE FUNCTION aegis_edge_notify_blacklisted();
