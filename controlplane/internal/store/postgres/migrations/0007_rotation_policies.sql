-- Rotation policies (DESIGN.md §10): per tenant, a named target selector and the
-- maximum age a selected host's key may reach before the daemon rotates it itself.
-- The selector is kept in canonical form and evaluated by the control plane.

CREATE TABLE rotation_policies (
    tenant_id      text        NOT NULL REFERENCES tenants (id),
    name           text        NOT NULL,
    target         text        NOT NULL,
    max_key_age_ms bigint      NOT NULL,
    created_at     timestamptz,
    updated_at     timestamptz,
    updated_by     text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, name)
);
