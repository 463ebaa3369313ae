-- 008: rollouts no other OTA orchestrator does.
--  * a canary that covers every (manufacturer, model, from-version) group in the first wave;
--  * "unreachable": a device silent for the campaign's unreachable_after is not failed; it
--    waits outside the abort rule and the wave gate, and its next report puts it back;
--  * an in-flight cap per campaign (the fleet-wide one is ORCH_MAX_IN_FLIGHT);
--  * maintenance windows in a time zone;
--  * the measured rate and the ETA, kept by the controller, shown by the views.
ALTER TABLE ota.campaign_devices DROP CONSTRAINT campaign_devices_state_check;
ALTER TABLE ota.campaign_devices ADD CONSTRAINT campaign_devices_state_check
    CHECK (state IN ('pending', 'checking', 'gated', 'dispatched', 'downloading',
                     'upgrading', 'succeeded', 'failed', 'no_task', 'cancelled',
                     'unreachable'));
-- a status report looks up the reporting device's unreachable memberships: a tiny index
CREATE INDEX campaign_devices_unreachable_idx ON ota.campaign_devices (dev_id)
    WHERE state = 'unreachable';

ALTER TABLE ota.campaigns
    ADD COLUMN canary integer CHECK (canary > 0),
    ADD COLUMN unreachable_after double precision NOT NULL DEFAULT 3600
        CHECK (unreachable_after > 0),
    ADD COLUMN max_in_flight integer CHECK (max_in_flight > 0),
    ADD COLUMN windows text[] NOT NULL DEFAULT '{}',
    ADD COLUMN timezone text NOT NULL DEFAULT 'UTC',
    ADD COLUMN rate_per_min double precision,
    ADD COLUMN eta_at timestamptz;

-- the fleet's recent check rate (checks per minute), for plans made before a campaign runs
ALTER TABLE ota.health ADD COLUMN check_rate_per_min double precision,
                       ADD COLUMN check_rate_at timestamptz;

-- views only gain columns: unreachable, remaining, rate_per_min, eta_at, in_flight
-- (in_progress no longer counts unreachable devices)
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
                                                  'upgrading')), 0)::bigint AS in_flight
FROM ota.campaigns c
LEFT JOIN ota.campaign_state_counts k ON k.campaign_id = c.campaign_id
GROUP BY c.campaign_id;

-- devices being checked or in flight, per campaign and over the fleet (what the caps count)
CREATE VIEW ota.in_flight AS
SELECT campaign_id,
       coalesce(sum(n) FILTER (WHERE state IN ('dispatched', 'downloading', 'upgrading')),
                0)::bigint AS in_flight,
       coalesce(sum(n) FILTER (WHERE state = 'checking'), 0)::bigint AS checking
FROM ota.campaign_state_counts
WHERE state IN ('checking', 'dispatched', 'downloading', 'upgrading')
GROUP BY campaign_id;
