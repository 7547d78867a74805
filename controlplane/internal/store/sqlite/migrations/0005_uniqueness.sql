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
      AND (COALESCE(older.created_at, -1), older.id) < (COALESCE(tenants.created_at, -1), tenants.id)
);
CREATE UNIQUE INDEX tenants_name ON tenants (name);

-- Each rotation issues a token of its own; a replay answers the recorded row.
CREATE UNIQUE INDEX rotations_new_token ON rotations (new_token_jti);

-- A host's position is its place in the run's plan order, one host per place.
CREATE UNIQUE INDEX fleet_run_hosts_position ON fleet_run_hosts (run_id, position);
