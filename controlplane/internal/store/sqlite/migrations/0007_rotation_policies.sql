-- Rotation policies (DESIGN.md §10): per tenant, a named target selector and the
-- maximum age a selected host's key may reach before the daemon rotates it itself.
-- The selector is kept in canonical form and evaluated by the control plane.

CREATE TABLE rotation_policies (
    tenant_id      TEXT    NOT NULL REFERENCES tenants (id),
    name           TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    max_key_age_ms INTEGER NOT NULL,
    created_at     INTEGER,
    updated_at     INTEGER,
    updated_by     TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, name)
) STRICT;
