-- 009: views for dashboards (deploy/grafana/dashboards), each served by an index at a
-- million devices. Views are the contract; they only ever gain columns.

-- per wave: counts by state (kept counts, never the membership rows), and whether it is open
CREATE VIEW ota.wave_progress AS
SELECT c.campaign_id, k.wave + 1 AS wave, (k.wave <= c.current_wave) AS opened,
       sum(k.n)::bigint AS total,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'pending'), 0)::bigint AS pending,
       coalesce(sum(k.n) FILTER (WHERE k.state IN ('checking', 'gated', 'dispatched',
                                                  'downloading', 'upgrading')), 0)::bigint
           AS in_progress,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'succeeded'), 0)::bigint AS succeeded,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'failed'), 0)::bigint AS failed,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'no_task'), 0)::bigint AS no_task,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'cancelled'), 0)::bigint AS cancelled,
       coalesce(sum(k.n) FILTER (WHERE k.state = 'unreachable'), 0)::bigint AS unreachable
FROM ota.campaigns c
JOIN ota.campaign_state_counts k ON k.campaign_id = c.campaign_id
GROUP BY c.campaign_id, k.wave, c.current_wave;

-- failed devices by errno (with its meaning) and reason; a partial index serves it
CREATE INDEX campaign_devices_failed_idx ON ota.campaign_devices (campaign_id, last_errno)
    WHERE state = 'failed';
CREATE VIEW ota.failure_reasons AS
SELECT campaign_id, last_errno AS errno, ota.errno_text(last_errno) AS meaning,
       coalesce(last_error, 'errno ' || last_errno) AS reason, count(*)::bigint AS devices
FROM ota.campaign_devices WHERE state = 'failed'
GROUP BY campaign_id, last_errno, last_error;

-- unreachable devices, listed
CREATE INDEX campaign_devices_unreachable_campaign_idx ON ota.campaign_devices (campaign_id)
    WHERE state = 'unreachable';
CREATE VIEW ota.unreachable_devices AS
SELECT cd.campaign_id, cd.dev_id, cd.last_error AS reason, cd.updated_at AS since,
       d.last_seen, d.manuf, d.model
FROM ota.campaign_devices cd JOIN ota.devices d USING (dev_id)
WHERE cd.state = 'unreachable';

-- device transitions (the event log's device rows), for time series
CREATE VIEW ota.transitions AS
SELECT at, campaign_id, dev_id, from_state, to_state, reason, actor,
       (detail->>'errno')::int AS errno, (detail->>'step')::int AS step
FROM ota.events WHERE kind = 'transition';


-- check outcomes gain the errno's meaning (appended: views only gain columns)
CREATE OR REPLACE VIEW ota.check_outcomes AS
SELECT campaign_id, errno, calls, ota.errno_text(errno) AS meaning FROM ota.check_counts;

-- the fleet-wide cap as the live replicas have it (each beats its ORCH_MAX_IN_FLIGHT)
ALTER TABLE ota.replicas ADD COLUMN max_in_flight integer;
CREATE VIEW ota.fleet_in_flight AS
SELECT coalesce((SELECT sum(in_flight) FROM ota.in_flight), 0)::bigint AS in_flight,
       coalesce((SELECT sum(checking) FROM ota.in_flight), 0)::bigint AS checking,
       (SELECT min(max_in_flight) FROM ota.replicas
        WHERE beat_at > now() - interval '30 seconds') AS max_in_flight;

-- transitions per minute, kept as the event log grows: time-series panels read a few rows a
-- minute instead of the log. Writers append deltas (no hot row between concurrent ingest
-- batches); the controller folds them into ota.transition_minutes.
CREATE TABLE ota.transition_minutes (
    campaign_id  bigint NOT NULL,
    minute       timestamptz NOT NULL,
    to_state     text NOT NULL,
    cause        text NOT NULL DEFAULT '',     -- gated: signal, power, stale or other
    n            bigint NOT NULL,
    PRIMARY KEY (campaign_id, minute, to_state, cause)
);
CREATE TABLE ota.transition_minute_deltas (
    campaign_id  bigint NOT NULL,
    minute       timestamptz NOT NULL,
    to_state     text NOT NULL,
    cause        text NOT NULL DEFAULT '',
    n            bigint NOT NULL
);
CREATE INDEX transition_minute_deltas_idx ON ota.transition_minute_deltas (campaign_id, minute);

CREATE FUNCTION ota.gate_cause(reason text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN reason LIKE '%low_signal%' THEN 'signal'
                WHEN reason LIKE '%low_power%' THEN 'power'
                WHEN reason LIKE '%stale%' OR reason LIKE '%unknown status%' THEN 'stale'
                ELSE 'other' END
$$;

CREATE FUNCTION ota.count_transitions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ota.transition_minute_deltas (campaign_id, minute, to_state, cause, n)
    SELECT campaign_id, date_trunc('minute', at), to_state,
           CASE WHEN to_state = 'gated' THEN ota.gate_cause(reason) ELSE '' END, count(*)
    FROM new_rows
    WHERE kind = 'transition' AND campaign_id IS NOT NULL AND to_state IS NOT NULL
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
CREATE TRIGGER events_count_transitions AFTER INSERT ON ota.events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION ota.count_transitions();

-- what is already in the log
INSERT INTO ota.transition_minutes (campaign_id, minute, to_state, cause, n)
SELECT campaign_id, date_trunc('minute', at), to_state,
       CASE WHEN to_state = 'gated' THEN ota.gate_cause(reason) ELSE '' END, count(*)
FROM ota.events WHERE kind = 'transition' AND campaign_id IS NOT NULL AND to_state IS NOT NULL
GROUP BY 1, 2, 3, 4;

CREATE VIEW ota.transitions_per_minute AS
SELECT campaign_id, minute, to_state, cause, sum(n)::bigint AS n FROM (
    SELECT campaign_id, minute, to_state, cause, n FROM ota.transition_minutes
    UNION ALL
    SELECT campaign_id, minute, to_state, cause, n FROM ota.transition_minute_deltas
) x GROUP BY 1, 2, 3, 4;

-- gate retries by cause, one row each (the panels read ota.transitions_per_minute)
CREATE VIEW ota.gate_retries AS
SELECT at, campaign_id, dev_id, ota.gate_cause(reason) AS cause
FROM ota.events WHERE kind = 'transition' AND to_state = 'gated';

