-- The transaction notifies only the blacklist entries that end a node's access:
-- revocations and logouts. They are rare, and they must reach every replica even if
-- the replica that committed them dies right after its commit (migration 0005).
--
-- The routine entries, a token superseded by an attestation ("refreshed") or by a
-- key rotation ("rotated"), are announced by the committing replica right after its
-- commit, batched with whatever else it is announcing. Notified from the transaction,
-- each one took PostgreSQL's database-wide notification lock at commit and held it
-- across the commit's WAL flush, so the rotations of the whole system committed one
-- at a time. A routine announcement that is lost (the replica died between its commit
-- and the announcement) heals at the other replicas' next blacklist re-read.
DROP TRIGGER token_blacklist_notify ON token_blacklist;

CREATE TRIGGER token_blacklist_notify
    AFTER INSERT ON token_blacklist
    FOR EACH ROW
    WHEN (NEW.reason IN ('revoked', 'logout'))
    EXECUTE FUNCTION aegis_edge_notify_blacklisted();
