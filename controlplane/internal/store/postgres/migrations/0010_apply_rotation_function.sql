-- A key rotation's six writes as one function, so that a rotation outside any open
-- transaction is one statement: one round trip that commits, where the batch took
-- three (BEGIN with the batch, its savepoint, COMMIT). Each statement is the very one
-- its single method runs (sqlstore.ClaimKeySQL, swapKeySQL, sqlstore.BlacklistSQL,
-- sqlstore.InsertNodeTokenSQL, sqlstore.InsertRotationSQL, appendAuditSQL), in that
-- order, each seeing the ones before it. Any write that would change nothing (a key
-- already claimed, a lost swap, a token or rotation id already recorded) raises
-- SQLSTATE AE001, which undoes the statement's writes: a rotation is written whole
-- or not at all, and the caller then makes the writes one at a time, in a
-- transaction, to learn why.
CREATE FUNCTION aegis_apply_rotation(
    p_new_key bytea, p_node_id text, p_at timestamptz, p_old_key bytea, p_overlap_until timestamptz,
    p_bl_jti text, p_bl_node text, p_bl_reason text, p_bl_expires timestamptz, p_bl_added timestamptz,
    p_tok_jti text, p_tok_node text, p_tok_kfp text, p_tok_issued timestamptz, p_tok_expires timestamptz,
    p_rot_id text, p_rot_node text, p_rot_old_fp text, p_rot_new_fp text, p_rot_jti text, p_rot_token text, p_rot_at timestamptz,
    p_a_at timestamptz, p_a_tenant text, p_a_actor text, p_a_action text, p_a_node text, p_a_result text, p_a_details jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    n bigint;
    audit_pid bigint;
BEGIN
    INSERT INTO daemon_keys (key, node_id, claimed_at)
    VALUES (p_new_key, p_node_id, p_at)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'AE001', MESSAGE = 'rotation not applied: the new key is claimed';
    END IF;

    UPDATE edge_daemons
    SET public_key = p_new_key, previous_public_key = p_old_key, overlap_until = p_overlap_until, key_rotated_at = p_at
    WHERE node_id = p_node_id
      AND public_key = p_old_key
      AND status = 'active'
      AND NOT EXISTS (SELECT 1 FROM edge_daemons AS holder WHERE holder.public_key = p_new_key);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'AE001', MESSAGE = 'rotation not applied: the swap from the old key found no active daemon holding it';
    END IF;

    -- No rows is the first entry winning, not a failure.
    INSERT INTO token_blacklist (jti, node_id, reason, expires_at, added_at)
    VALUES (p_bl_jti, p_bl_node, p_bl_reason, p_bl_expires, p_bl_added)
    ON CONFLICT (jti) DO NOTHING;

    INSERT INTO node_tokens (jti, node_id, key_fingerprint, issued_at, expires_at)
    VALUES (p_tok_jti, p_tok_node, p_tok_kfp, p_tok_issued, p_tok_expires)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'AE001', MESSAGE = 'rotation not applied: the new token id is recorded';
    END IF;

    INSERT INTO rotations (rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at)
    VALUES (p_rot_id, p_rot_node, p_rot_old_fp, p_rot_new_fp, p_rot_jti, p_rot_token, p_rot_at)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'AE001', MESSAGE = 'rotation not applied: the rotation id is recorded';
    END IF;

    INSERT INTO audit_pending (tx_group, at, tenant_id, actor, action, node_id, result, details)
    VALUES (pg_current_xact_id()::text::bigint, p_a_at, p_a_tenant, p_a_actor, p_a_action, p_a_node, p_a_result, p_a_details)
    RETURNING pid INTO audit_pid;
    RETURN audit_pid;
END;
$$;
