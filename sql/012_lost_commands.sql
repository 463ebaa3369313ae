-- 012: a status report looks up the reporting device's memberships that a word from it may
-- move: unreachable ones (back in line) and dispatched ones (a status on the old version with
-- no progress says the command was lost). Both are few at any time: one small index.
CREATE INDEX campaign_devices_listening_idx ON ota.campaign_devices (dev_id)
    WHERE state IN ('unreachable', 'dispatched');
DROP INDEX ota.campaign_devices_unreachable_idx;

-- failure reasons grouped without their per-device detail: "gate: low_signal (signal 8, the
-- task needs > 10)" counts under "gate: low_signal"
CREATE OR REPLACE VIEW ota.failure_reasons AS
SELECT campaign_id, last_errno AS errno, ota.errno_text(last_errno) AS meaning,
       regexp_replace(coalesce(last_error, 'errno ' || last_errno), ' \(.*\)$', '') AS reason,
       count(*)::bigint AS devices
FROM ota.campaign_devices WHERE state = 'failed'
GROUP BY campaign_id, last_errno, 4;

-- OneNET's manufacturer and module tables, for enrolment: a device whose module is not in
-- them cannot be checked (errno 2), so it is left out, counted. Filled by 'orchestrator
-- migrate' from the domain's copy of the tables (orchestrator/domain/_tables.py), the one
-- source; names and codes both, as a device may report either.
CREATE TABLE ota.modules (
    manuf       text NOT NULL,
    model       text NOT NULL,
    PRIMARY KEY (manuf, model)
);

-- the selector, every module (the campaign selector is this less unknown modules)
CREATE FUNCTION ota.selected_any(p_type text, p_manuf text, p_model text, p_froms text[],
                                 p_ids bigint[], p_target text, p_since timestamptz)
RETURNS TABLE (dev_id bigint, version text, checkable boolean)
LANGUAGE sql STABLE AS $$
    SELECT d.dev_id, v.version,
           (d.manuf, d.model) IN (SELECT m.manuf, m.model FROM ota.modules m)
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

CREATE OR REPLACE FUNCTION ota.selected_since(p_type text, p_manuf text, p_model text,
                                              p_froms text[], p_ids bigint[], p_target text,
                                              p_since timestamptz)
RETURNS TABLE (dev_id bigint, version text)
LANGUAGE sql STABLE AS $$
    SELECT s.dev_id, s.version
    FROM ota.selected_any(p_type, p_manuf, p_model, p_froms, p_ids, p_target, p_since) s
    WHERE s.checkable
$$;

-- what a campaign waits on: the open waves' devices not finished, and until when (their next
-- check, or the deadline of their command); few by the time a wave is waited on, and a
-- partial index finds the last of them without reading the finished ones
CREATE INDEX campaign_devices_open_idx
    ON ota.campaign_devices (campaign_id, wave, next_attempt_at) WHERE state IN ('pending', 'checking', 'gated', 'dispatched', 'downloading', 'upgrading');
CREATE VIEW ota.campaign_waits AS
SELECT cd.campaign_id, cd.wave + 1 AS wave, cd.dev_id, cd.state,
       cd.next_attempt_at AS until, cd.last_error AS reason
FROM ota.campaign_devices cd JOIN ota.campaigns c USING (campaign_id)
WHERE c.status IN ('running', 'paused') AND cd.wave <= c.current_wave
  AND cd.state IN ('pending', 'checking', 'gated', 'dispatched', 'downloading', 'upgrading');

-- why there is no ETA (paused, stalled, no rate yet), kept by the controller with the rate
ALTER TABLE ota.campaigns ADD COLUMN eta_note text;

-- the view gains the status's reason, the open wave (1-based, as everywhere people read it),
-- the number of waves, and why there is no ETA
CREATE OR REPLACE VIEW ota.campaign_progress AS
SELECT c.campaign_id, c.name, c.status, c.type, c.target_version,
       coalesce(sum(k.n), 0)::bigint AS total,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'pending'), 0)::bigint AS pending,
       coalesce(sum(k.n) FILTER (WHERE k.state IN ('checking', 'gated', 'dispatched',
                                                  'downloading', 'upgrading')), 0)::bigint
           AS in_progress,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'succeeded'), 0)::bigint AS succeeded,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'failed'), 0)::bigint AS failed,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'no_task'), 0)::bigint AS no_task,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'cancelled'), 0)::bigint AS cancelled,
       c.started_at, c.finished_at,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'unreachable'), 0)::bigint AS unreachable,
       coalesce(sum(k.n) FILTER (WHERE k.state IN ('pending', 'checking', 'gated',
                                                  'dispatched', 'downloading',
                                                  'upgrading')), 0)::bigint AS remaining,
       c.rate_per_min, c.eta_at,
       coalesce(sum(k.n) FILTER (WHERE k.state IN ('dispatched', 'downloading',
                                                  'upgrading')), 0)::bigint AS in_flight,
       c.status_reason, c.current_wave + 1 AS current_wave,
       cardinality(c.waves) AS waves_total, c.eta_note
FROM ota.campaigns c
LEFT JOIN ota.campaign_state_counts k ON k.campaign_id = c.campaign_id
GROUP BY c.campaign_id;
