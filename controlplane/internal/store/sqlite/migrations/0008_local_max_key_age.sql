-- The host's own maximum key age (rotation.max_key_age in edged's config), reported
-- in each stream's Hello and kept with the host, so its due time and overdue mark use
-- the smallest of it and the policies' even while it is disconnected. 0: none.
ALTER TABLE edge_daemons ADD COLUMN local_max_key_age_ms INTEGER NOT NULL DEFAULT 0;
