-- `aegisctl audit list --node`. (The audit chain's ids are now chosen by AppendAudit;
-- SQLite takes an explicit id in an AUTOINCREMENT column as it is.)
CREATE INDEX audit_log_node ON audit_log (node_id, id);
