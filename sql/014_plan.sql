-- 014: a plan reads the fleet once and writes nothing. The selector, written once, now says
-- of every device it matches whether OneNET can check it and whether it runs the target
-- already, with what the plan counts (module, status); enrolment keeps reading the devices
-- to enrol through selected_any, as before.
CREATE FUNCTION ota.selected_all(p_type text, p_manuf text, p_model text, p_froms text[],
                                 p_ids bigint[], p_target text, p_since timestamptz)
RETURNS TABLE (dev_id bigint, version text, checkable boolean, on_target boolean,
               manuf text, model text, status_at timestamptz, signal integer, power integer,
               radio smallint[])
LANGUAGE sql STABLE AS $$
    SELECT d.dev_id, v.version,
           (d.manuf, d.model) IN (SELECT m.manuf, m.model FROM ota.modules m),
           v.version IS NOT DISTINCT FROM p_target,
           d.manuf, d.model, d.status_at, d.signal, d.power, d.radio
    FROM ota.devices d
    CROSS JOIN LATERAL (SELECT CASE p_type WHEN 'fota' THEN d.fota_version
                                           ELSE d.sota_version END AS version) v
    WHERE d.created_at > p_since
      AND (p_manuf IS NULL OR d.manuf = p_manuf)
      AND (p_model IS NULL OR d.model = p_model)
      AND (cardinality(p_froms) = 0 OR v.version = ANY(p_froms))
      AND (p_ids IS NULL OR d.dev_id = ANY(p_ids))
$$;

CREATE OR REPLACE FUNCTION ota.selected_any(p_type text, p_manuf text, p_model text,
                                            p_froms text[], p_ids bigint[], p_target text,
                                            p_since timestamptz)
RETURNS TABLE (dev_id bigint, version text, checkable boolean)
LANGUAGE sql STABLE AS $$
    SELECT s.dev_id, s.version, s.checkable
    FROM ota.selected_all(p_type, p_manuf, p_model, p_froms, p_ids, p_target, p_since) s
    WHERE NOT s.on_target
$$;
