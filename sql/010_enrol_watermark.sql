-- 010: continuous campaigns enrol what changed, not the registry. A pass looks only at
-- devices created after a watermark (an index on created_at, which is written once: status
-- upserts stay HOT updates); a full pass still runs now and then to catch a device whose
-- version changed into the selector.
CREATE INDEX devices_created_idx ON ota.devices (created_at);

-- the selector over devices created after p_since (an inlinable SQL function, as ota.selected)
CREATE FUNCTION ota.selected_since(p_type text, p_manuf text, p_model text, p_froms text[],
                                   p_ids bigint[], p_target text, p_since timestamptz)
RETURNS TABLE (dev_id bigint, version text)
LANGUAGE sql STABLE AS $$
    SELECT d.dev_id, v.version
    FROM ota.devices d
    CROSS JOIN LATERAL (SELECT CASE p_type WHEN 'fota' THEN d.fota_version
                                           ELSE d.sota_version END AS version) v
    WHERE d.created_at > p_since
      AND (p_manuf IS NULL OR d.manuf = p_manuf)
      AND (p_model IS NULL OR d.model = p_model)
      AND (cardinality(p_froms) = 0 OR v.version = ANY(p_froms))
      AND (p_ids IS NULL OR d.dev_id = ANY(p_ids))
      AND v.version IS DISTINCT FROM p_target
$$;

-- the selector, written once: every device (a constant bound, so plans are as before)
CREATE OR REPLACE FUNCTION ota.selected(p_type text, p_manuf text, p_model text,
                                        p_froms text[], p_ids bigint[], p_target text)
RETURNS TABLE (dev_id bigint, version text)
LANGUAGE sql STABLE AS $$
    SELECT * FROM ota.selected_since(p_type, p_manuf, p_model, p_froms, p_ids, p_target,
                                     '-infinity')
$$;
