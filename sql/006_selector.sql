-- 006: the campaign selector, written once. An inlinable SQL function (STABLE, one SELECT):
-- the planner sees through it, so enrolment keeps its plans (index on model, hash anti-join
-- on ota.busy_devices). Arguments: type, manuf, model, from-versions, listed ids, target.
-- Rows: the devices the selector picks that are not on the target already.
CREATE FUNCTION ota.selected(p_type text, p_manuf text, p_model text, p_froms text[],
                             p_ids bigint[], p_target text)
RETURNS TABLE (dev_id bigint, version text)
LANGUAGE sql STABLE AS $$
    SELECT d.dev_id, v.version
    FROM ota.devices d
    CROSS JOIN LATERAL (SELECT CASE p_type WHEN 'fota' THEN d.fota_version
                                           ELSE d.sota_version END AS version) v
    WHERE (p_manuf IS NULL OR d.manuf = p_manuf)
      AND (p_model IS NULL OR d.model = p_model)
      AND (cardinality(p_froms) = 0 OR v.version = ANY(p_froms))
      AND (p_ids IS NULL OR d.dev_id = ANY(p_ids))
      AND v.version IS DISTINCT FROM p_target
$$;
