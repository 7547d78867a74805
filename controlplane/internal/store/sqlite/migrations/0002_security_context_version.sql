-- A host's security context gets a version, bumped on every assignment, so a token
-- (claim sctxv) says which assignment it carries and a newer one is recognisable.
ALTER TABLE edge_daemons ADD COLUMN security_context_version INTEGER NOT NULL DEFAULT 0;
