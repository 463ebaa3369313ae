-- 013: radio-aware gating. Each device keeps a radio profile (domain/radio.py says what it
-- holds: per slot of the day, the reports' count and the weighted mean and mean absolute
-- deviation of signal and power, in tenths), its serving cell and coverage level; campaign
-- members keep the best slot and its pass estimate once their gate failed; campaigns may cap
-- downloads per cell and choose fixed-interval gating instead.
ALTER TABLE ota.devices
    ADD COLUMN radio smallint[],
    ADD COLUMN cell text,
    ADD COLUMN rsrp smallint,
    ADD COLUMN ce_level smallint CHECK (ce_level BETWEEN 0 AND 2);
CREATE INDEX devices_cell_idx ON ota.devices (cell) WHERE cell IS NOT NULL;

ALTER TABLE ota.campaigns
    ADD COLUMN max_per_cell integer CHECK (max_per_cell > 0),
    ADD COLUMN gating text NOT NULL DEFAULT 'radio' CHECK (gating IN ('radio', 'interval'));

ALTER TABLE ota.campaign_devices
    ADD COLUMN best_slot smallint,
    ADD COLUMN pass_probability real;

-- one more report in a profile: domain/radio.py's update, the same arithmetic (doubles,
-- rounded half up to tenths; a test holds the two together)
CREATE FUNCTION ota.radio_add(p smallint[], slot integer, sig integer, pow integer)
RETURNS smallint[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    a smallint[] := coalesce(p, array_fill(0::smallint, ARRAY[120]));
    i integer := slot * 5 + 1;
    n integer := a[i];
    w double precision := greatest(1.0 / (n + 1), 0.1);
    ms double precision := a[i + 1] / 10.0;
    ds double precision := a[i + 2] / 10.0;
    mp double precision := a[i + 3] / 10.0;
    dp double precision := a[i + 4] / 10.0;
    ms2 double precision;
    mp2 double precision;
BEGIN
    IF n = 0 THEN
        ms2 := sig; mp2 := pow; ds := 0; dp := 0;
    ELSE
        ms2 := ms + w * (sig - ms);
        mp2 := mp + w * (pow - mp);
        ds := ds + w * (abs(sig - ms2) - ds);
        dp := dp + w * (abs(pow - mp2) - dp);
    END IF;
    a[i] := least(n + 1, 1000);
    a[i + 1] := floor(ms2 * 10 + 0.5);
    a[i + 2] := floor(ds * 10 + 0.5);
    a[i + 3] := floor(mp2 * 10 + 0.5);
    a[i + 4] := floor(dp * 10 + 0.5);
    RETURN a;
END $$;

-- devices waiting for signal or power, and what their profile says of when
CREATE VIEW ota.gate_outlook AS
SELECT cd.campaign_id, cd.dev_id, cd.state, cd.best_slot AS best_hour, cd.pass_probability,
       d.cell, cd.next_attempt_at, cd.last_error AS reason
FROM ota.campaign_devices cd JOIN ota.devices d USING (dev_id)
JOIN ota.campaigns c USING (campaign_id)
WHERE cd.state = 'gated' AND c.status IN ('running', 'paused');

-- downloads (and checks) in flight per cell, fleet-wide: what the per-cell cap counts
CREATE VIEW ota.cell_load AS
SELECT d.cell, max(d.ce_level) AS ce_level, count(*) AS in_flight
FROM ota.campaign_devices cd JOIN ota.devices d USING (dev_id)
WHERE d.cell IS NOT NULL
  AND cd.state IN ('checking', 'dispatched', 'downloading', 'upgrading')
GROUP BY d.cell;

-- a status report also wakes a gated device whose fresh report passes its task's gate
CREATE INDEX campaign_devices_wake_idx ON ota.campaign_devices (dev_id)
    WHERE state IN ('unreachable', 'dispatched', 'gated');
DROP INDEX ota.campaign_devices_listening_idx;

-- what a cell has in flight: from the few in-flight rows, never from a cell's every device
CREATE INDEX campaign_devices_busy_idx ON ota.campaign_devices (dev_id)
    WHERE state IN ('checking', 'dispatched', 'downloading', 'upgrading');
