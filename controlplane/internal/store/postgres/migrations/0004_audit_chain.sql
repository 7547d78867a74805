-- The audit chain covers each entry's id, so AppendAudit picks the id itself (the last
-- id + 1, under the audit lock) before hashing; an identity column hands out ids only
-- at insert time.
ALTER TABLE audit_log ALTER COLUMN id DROP IDENTITY;

-- `aegisctl audit list --node`.
CREATE INDEX audit_log_node ON audit_log (node_id, id);
