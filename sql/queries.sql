-- Named queries, loaded by orchestrator.store.queries: each block starts with
-- "-- name: NAME" and runs to the next one. The store is the only code that runs SQL, and
-- these are its statements; migrations (NNN_*.sql) sit beside this file.

-- name: device_upsert_status
-- Batched status reports, one row per device (folded and sorted by the caller). $1: a JSON
-- array of [dev_id, manuf, model, fota, sota, signal, power, cell, rsrp, ce_level] (one
-- jsonb, not 10 arrays: asyncpg's array parameters cost 2.4-3.7 us of our CPU per row, this
-- 0.3-0.8). A report with both signal and power goes into the device's radio profile, in
-- slot $2 of the day (domain/radio.py's slot_of).
INSERT INTO ota.devices AS d
    (dev_id, manuf, model, fota_version, sota_version, signal, power, status_at, last_seen,
     cell, rsrp, ce_level, radio)
SELECT u.dev_id, u.manuf, u.model, u.fota, u.sota, u.signal, u.power,
       CASE WHEN u.signal IS NOT NULL OR u.power IS NOT NULL THEN now() END, now(),
       u.cell, u.rsrp, u.ce_level,
       CASE WHEN u.signal IS NOT NULL AND u.power IS NOT NULL
            THEN ota.radio_add(NULL, $2::int, u.signal, u.power) END
FROM (SELECT (e->>0)::bigint AS dev_id, e->>1 AS manuf, e->>2 AS model, e->>3 AS fota,
             e->>4 AS sota, (e->>5)::int AS signal, (e->>6)::int AS power, e->>7 AS cell,
             (e->>8)::smallint AS rsrp, (e->>9)::smallint AS ce_level
      FROM jsonb_array_elements($1::jsonb) e) u
ORDER BY u.dev_id
ON CONFLICT (dev_id) DO UPDATE SET
    manuf = coalesce(EXCLUDED.manuf, d.manuf),
    model = coalesce(EXCLUDED.model, d.model),
    fota_version = coalesce(EXCLUDED.fota_version, d.fota_version),
    sota_version = coalesce(EXCLUDED.sota_version, d.sota_version),
    signal = coalesce(EXCLUDED.signal, d.signal),
    power = coalesce(EXCLUDED.power, d.power),
    status_at = coalesce(EXCLUDED.status_at, d.status_at),
    last_seen = EXCLUDED.last_seen,
    cell = coalesce(EXCLUDED.cell, d.cell),
    rsrp = coalesce(EXCLUDED.rsrp, d.rsrp),
    ce_level = coalesce(EXCLUDED.ce_level, d.ce_level),
    radio = CASE WHEN EXCLUDED.signal IS NOT NULL AND EXCLUDED.power IS NOT NULL
                 THEN ota.radio_add(d.radio, $2::int, EXCLUDED.signal, EXCLUDED.power)
                 ELSE d.radio END,
    updated_at = now();

-- name: device_import
-- An import is not a report: no status time, no signal/power; and what a device reported
-- itself (it has been seen) wins over the file.
INSERT INTO ota.devices AS d (dev_id, manuf, model, fota_version, sota_version, signal, power)
SELECT (e->>0)::bigint, e->>1, e->>2, e->>3, e->>4, (e->>5)::int, (e->>6)::int
FROM jsonb_array_elements($1::jsonb) e ORDER BY 1
ON CONFLICT (dev_id) DO UPDATE SET
    manuf = CASE WHEN d.last_seen IS NULL THEN coalesce(EXCLUDED.manuf, d.manuf)
                 ELSE coalesce(d.manuf, EXCLUDED.manuf) END,
    model = CASE WHEN d.last_seen IS NULL THEN coalesce(EXCLUDED.model, d.model)
                 ELSE coalesce(d.model, EXCLUDED.model) END,
    fota_version = CASE WHEN d.last_seen IS NULL
                        THEN coalesce(EXCLUDED.fota_version, d.fota_version)
                        ELSE coalesce(d.fota_version, EXCLUDED.fota_version) END,
    sota_version = CASE WHEN d.last_seen IS NULL
                        THEN coalesce(EXCLUDED.sota_version, d.sota_version)
                        ELSE coalesce(d.sota_version, EXCLUDED.sota_version) END,
    updated_at = now();

-- name: device_get
SELECT dev_id, manuf, model, fota_version, sota_version, signal, power, status_at, last_seen
FROM ota.devices WHERE dev_id = $1;

-- name: device_list
SELECT dev_id, manuf, model, fota_version, sota_version, signal, power, status_at, last_seen
FROM ota.devices
WHERE dev_id > $1 AND ($2::text IS NULL OR manuf = $2) AND ($3::text IS NULL OR model = $3)
ORDER BY dev_id LIMIT $4;

-- name: devices_missing
-- Listed ids that are not in the registry.
SELECT array_agg(x ORDER BY x) FROM unnest($1::bigint[]) x
WHERE NOT EXISTS (SELECT 1 FROM ota.devices d WHERE d.dev_id = x);

-- name: campaign_list
-- Campaigns with their kept counts: one ($1), or by status ($2), newest first.
SELECT c.campaign_id, c.name, c.status, c.type, c.target_version, c.selector, c.waves,
       c.wave_success_pct::float8 AS wave_success_pct, c.current_wave, c.max_per_minute,
       c.abort_failure_pct::float8 AS abort_failure_pct, c.abort_min_finished, c.continuous,
       c.status_reason, c.created_at, c.started_at, c.finished_at,
       p.pending, p.in_progress, p.succeeded, p.failed, p.no_task, p.cancelled,
       c.abort_action, c.rule_failed_base, c.rule_finished_base, c.gate_accepted_wave,
       c.dispatch_timeout, p.unreachable, c.canary, c.unreachable_after, c.max_in_flight,
       c.windows, c.timezone, c.rate_per_min, c.eta_at, c.eta_note, c.max_per_cell,
       c.gating
FROM ota.campaigns c JOIN ota.campaign_progress p USING (campaign_id)
WHERE ($1::bigint IS NULL OR c.campaign_id = $1) AND ($2::text IS NULL OR c.status = $2)
ORDER BY c.campaign_id DESC LIMIT $3;

-- name: campaign_insert
-- $1: the new row as a JSON object keyed by column name.
INSERT INTO ota.campaigns (name, type, target_version, selector, waves,
                           wave_success_pct, max_per_minute, abort_failure_pct,
                           abort_min_finished, continuous, rate_tokens, abort_action,
                           dispatch_timeout, canary, unreachable_after, max_in_flight, windows,
                           timezone, max_per_cell, gating)
SELECT name, type, target_version, selector, waves, wave_success_pct, max_per_minute,
       abort_failure_pct, abort_min_finished, continuous, rate_tokens, abort_action,
       dispatch_timeout, canary, unreachable_after, max_in_flight, windows, timezone,
       max_per_cell, coalesce(gating, 'radio')
FROM jsonb_populate_record(NULL::ota.campaigns, $1::jsonb)
RETURNING campaign_id;

-- name: campaign_lock_status
SELECT status FROM ota.campaigns WHERE campaign_id = $1 FOR UPDATE;

-- name: campaign_set_status
-- A paused campaign has no ETA (the controller measures running ones only).
UPDATE ota.campaigns SET status = $2, status_reason = $3, updated_at = now(),
    eta_at = CASE WHEN $2 = 'running' THEN eta_at END,
    eta_note = CASE $2 WHEN 'running' THEN eta_note WHEN 'paused' THEN 'paused' END,
    started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
    finished_at = CASE WHEN $2 IN ('completed', 'cancelled', 'aborted') THEN now()
                       WHEN $2 = 'running' THEN NULL ELSE finished_at END
WHERE campaign_id = $1;

-- name: campaign_accept_evidence
-- Resumed: the rules judge only what happens from here on.
UPDATE ota.campaigns SET rule_failed_base = $2, rule_finished_base = $3,
    gate_accepted_wave = $4
WHERE campaign_id = $1;

-- name: campaign_set_wave
UPDATE ota.campaigns SET current_wave = $2, updated_at = now() WHERE campaign_id = $1;

-- name: campaign_set_wave_bounds
UPDATE ota.campaigns SET wave_bounds = $2 WHERE campaign_id = $1;

-- name: campaigns_running
SELECT campaign_id, type, current_wave, max_per_minute, dispatch_timeout, unreachable_after,
       max_in_flight, windows, timezone, gating, max_per_cell
FROM ota.campaigns WHERE status = 'running' ORDER BY campaign_id;

-- name: campaign_rate_lock
-- The rate bucket of a campaign: tokens left and seconds since last taken.
SELECT rate_tokens, extract(epoch FROM now() - rate_at)::float8 AS elapsed
FROM ota.campaigns WHERE campaign_id = $1 FOR UPDATE;

-- name: campaign_rate_set
UPDATE ota.campaigns SET rate_tokens = $2, rate_at = now() WHERE campaign_id = $1;

-- name: event_insert
INSERT INTO ota.events (campaign_id, dev_id, kind, from_state, to_state, reason, actor, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: enroll_count
-- How many devices a fresh campaign ($1) enrols: the selector's, less those another
-- running or paused campaign of the type is upgrading.
SELECT count(*) FROM ota.selected($7, $2, $3, $4, $5, $6) d
WHERE NOT EXISTS (SELECT 1 FROM ota.busy_devices b
                  WHERE b.dev_id = d.dev_id AND b.type = $7 AND b.campaign_id <> $1);

-- name: enroll_busy
-- How many devices the selector picks that another running or paused campaign of the same
-- type is upgrading (left out).
SELECT count(*) FROM ota.selected($7, $2, $3, $4, $5, $6) d
WHERE EXISTS (SELECT 1 FROM ota.busy_devices b
              WHERE b.dev_id = d.dev_id AND b.type = $7 AND b.campaign_id <> $1);

-- name: enroll_waves
-- A fresh campaign's devices, spread over waves by a hash of their id (so the first 1% is a
-- sample of the fleet). $8: exclusive upper ranks of the waves; $9: the last wave's index.
INSERT INTO ota.campaign_devices (campaign_id, dev_id, wave, next_attempt_at, from_version)
SELECT $1, dev_id, least(width_bucket(rn, $8::bigint[]), $9::int), now(), version
FROM (SELECT d.dev_id, d.version,
             row_number() OVER (ORDER BY hashint8(d.dev_id), d.dev_id) - 1 AS rn
      FROM ota.selected($7, $2, $3, $4, $5, $6) d
      WHERE NOT EXISTS (SELECT 1 FROM ota.busy_devices b
                        WHERE b.dev_id = d.dev_id AND b.type = $7 AND b.campaign_id <> $1)
      ) ranked
ORDER BY dev_id;  -- index order: random-order B-tree inserts cost twice as much

-- name: enroll_canary_size
-- How many devices a canary of $8 per (manufacturer, model, from-version) group holds.
SELECT coalesce(sum(least(n, $8::int)), 0) FROM (
    SELECT count(*) AS n
    FROM ota.selected($7, $2, $3, $4, $5, $6) d JOIN ota.devices x USING (dev_id)
    WHERE NOT EXISTS (SELECT 1 FROM ota.busy_devices b
                      WHERE b.dev_id = d.dev_id AND b.type = $7 AND b.campaign_id <> $1)
    GROUP BY x.manuf, x.model, d.version) g;

-- name: enroll_waves_canary
-- As enroll_waves, with a canary: the first $10 devices (by the hash) of every
-- (manufacturer, model, from-version) group rank first, so the first wave covers them all.
-- The domain's rollout.canary_ranks is the same order.
INSERT INTO ota.campaign_devices (campaign_id, dev_id, wave, next_attempt_at, from_version)
SELECT $1, dev_id, least(width_bucket(rn, $8::bigint[]), $9::int), now(), version
FROM (SELECT dev_id, version,
             row_number() OVER (ORDER BY in_group > $10::int, h, dev_id) - 1 AS rn
      FROM (SELECT d.dev_id, d.version, hashint8(d.dev_id) AS h,
                   row_number() OVER (PARTITION BY x.manuf, x.model, d.version
                                      ORDER BY hashint8(d.dev_id), d.dev_id) AS in_group
            FROM ota.selected($7, $2, $3, $4, $5, $6) d JOIN ota.devices x USING (dev_id)
            WHERE NOT EXISTS (SELECT 1 FROM ota.busy_devices b
                              WHERE b.dev_id = d.dev_id AND b.type = $7
                                AND b.campaign_id <> $1)) g
      ) ranked
ORDER BY dev_id;

-- name: enroll_late
-- Devices that match a continuous campaign and are not in it yet join wave $8 (the whole
-- registry: the reconciling pass).
INSERT INTO ota.campaign_devices (campaign_id, dev_id, wave, next_attempt_at, from_version)
SELECT $1, d.dev_id, $8::int, now(), d.version
FROM ota.selected($7, $2, $3, $4, $5, $6) d
WHERE NOT EXISTS (SELECT 1 FROM ota.campaign_devices x
                  WHERE x.campaign_id = $1 AND x.dev_id = d.dev_id)
  AND NOT EXISTS (SELECT 1 FROM ota.busy_devices b
                  WHERE b.dev_id = d.dev_id AND b.type = $7 AND b.campaign_id <> $1)
ORDER BY d.dev_id
ON CONFLICT DO NOTHING;

-- name: enroll_late_since
-- As enroll_late, over the devices created after $9 only (an index on created_at): a pass
-- with nothing new reads nothing.
INSERT INTO ota.campaign_devices (campaign_id, dev_id, wave, next_attempt_at, from_version)
SELECT $1, d.dev_id, $8::int, now(), d.version
FROM ota.selected_since($7, $2, $3, $4, $5, $6, $9) d
WHERE NOT EXISTS (SELECT 1 FROM ota.campaign_devices x
                  WHERE x.campaign_id = $1 AND x.dev_id = d.dev_id)
  AND NOT EXISTS (SELECT 1 FROM ota.busy_devices b
                  WHERE b.dev_id = d.dev_id AND b.type = $7 AND b.campaign_id <> $1)
ORDER BY d.dev_id
ON CONFLICT DO NOTHING;

-- name: members_cancel_commands
-- {"op": "cancel"} ($2, built by the domain) for every in-flight device ($3) of a campaign.
INSERT INTO ota.outbox (dev_id, payload)
SELECT dev_id, $2::jsonb FROM ota.campaign_devices
WHERE campaign_id = $1 AND state = ANY($3) ORDER BY dev_id;

-- name: members_cancel
UPDATE ota.campaign_devices SET state = 'cancelled', next_attempt_at = NULL, rev = rev + 1,
    updated_at = now()
WHERE campaign_id = $1 AND state <> ALL($2);

-- name: members_claim
-- Claim up to $4 due devices (SKIP LOCKED) and lease them: their due time moves $5 seconds
-- ahead, so a crashed replica's claims come back by themselves. The columns of
-- members_lock, then the device's; times as epoch seconds (a datetime object per value
-- cost our side 1.8 us a row), read by name.
WITH due AS (
    SELECT ctid FROM ota.campaign_devices
    WHERE campaign_id = $1 AND state = ANY($2) AND next_attempt_at <= now() AND wave <= $3
    ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED
), claimed AS (
    -- the locked rows by their ctid (one TID scan), not a join on the key, which the
    -- planner makes a hash over the whole table
    UPDATE ota.campaign_devices cd
    SET next_attempt_at = now() + make_interval(secs => $5), lease_owner = $6,
        lease_until = now() + make_interval(secs => $5),
        state = CASE WHEN cd.state IN ('pending', 'gated') THEN 'checking' ELSE cd.state END,
        rev = cd.rev + 1,
        -- the cell it is claimed in, for the per-cell cap (one key lookup per claimed row)
        (cell, ce_level) = (SELECT d.cell, d.ce_level FROM ota.devices d
                            WHERE d.dev_id = cd.dev_id)
    WHERE cd.ctid = ANY (ARRAY(SELECT ctid FROM due))
    RETURNING cd.*
)
SELECT cd.campaign_id, cd.dev_id, cd.rev, cd.wave, cd.state, cd.attempts,
       cd.transient_errors, date_part('epoch', cd.next_attempt_at) AS next_attempt_at,
       cd.last_errno, cd.last_step, cd.last_error, cd.task,
       date_part('epoch', cd.token_expires_at) AS token_expires_at,
       date_part('epoch', cd.dispatched_at) AS dispatched_at,
       date_part('epoch', cd.report_asked_at) AS report_asked_at,
       date_part('epoch', cd.heard_at) AS heard_at, cd.attempt, cd.best_slot,
       cd.pass_probability, c.type, c.target_version, c.dispatch_timeout,
       c.unreachable_after,
       d.manuf, d.model,
       CASE WHEN c.type = 'fota' THEN d.fota_version ELSE d.sota_version END AS version,
       d.signal, d.power, date_part('epoch', d.status_at) AS status_at,
       date_part('epoch', d.last_seen) AS last_seen, d.radio, d.cell, d.ce_level
FROM claimed cd JOIN ota.devices d USING (dev_id) JOIN ota.campaigns c USING (campaign_id)
ORDER BY cd.dev_id;

-- name: members_lock
-- Lock and read (campaign, device) rows in key order, so concurrent writers never deadlock.
-- Times as epoch seconds, read by name (the columns of members_claim's membership).
SELECT cd.campaign_id, cd.dev_id, cd.rev, cd.wave, cd.state, cd.attempts,
       cd.transient_errors, date_part('epoch', cd.next_attempt_at) AS next_attempt_at,
       cd.last_errno, cd.last_step, cd.last_error, cd.task,
       date_part('epoch', cd.token_expires_at) AS token_expires_at,
       date_part('epoch', cd.dispatched_at) AS dispatched_at,
       date_part('epoch', cd.report_asked_at) AS report_asked_at,
       date_part('epoch', cd.heard_at) AS heard_at, cd.attempt, cd.best_slot,
       cd.pass_probability, c.type, c.target_version, c.dispatch_timeout,
       c.unreachable_after
FROM ota.campaign_devices cd
JOIN unnest($1::bigint[], $2::bigint[]) AS k(c, d)
  ON cd.campaign_id = k.c AND cd.dev_id = k.d
JOIN ota.campaigns c ON c.campaign_id = cd.campaign_id
ORDER BY cd.campaign_id, cd.dev_id FOR UPDATE OF cd;

-- name: members_lock_keys
-- Lock (campaign, device) rows in key order before a write, reading nothing else. $1: a
-- JSON array of [campaign_id, dev_id].
SELECT cd.dev_id
FROM ota.campaign_devices cd
JOIN (SELECT (e->>0)::bigint AS c, (e->>1)::bigint AS d
      FROM jsonb_array_elements($1::jsonb) e) k
  ON cd.campaign_id = k.c AND cd.dev_id = k.d
ORDER BY cd.campaign_id, cd.dev_id FOR UPDATE OF cd;

-- name: members_write
-- Decided rows, each written only if unchanged since read (same rev), with one event per
-- row written that has a reason. $1: a JSON array of rows [campaign_id, dev_id, rev, state,
-- attempts, transient_errors, next_attempt_at, last_errno, last_step, last_error, task,
-- token_expires_at, dispatched_at, report_asked_at, heard_at, attempt, old_state, reason,
-- best_slot, pass_probability];
-- times as epoch seconds. One jsonb, not 18 arrays: asyncpg's array parameters cost
-- 5.6 us of our CPU per row (a Python ABC check per element), this 0.4 (and PostgreSQL
-- less too: 2.5 us against 4.1, measured with 2,000 rows). Typed jsonb, not text cast to
-- jsonb: the planner folds that cast, parsing the whole document again on every call
-- (22 ms of planning for 2,000 rows).
WITH u AS MATERIALIZED (
    SELECT (e->>0)::bigint AS cid, (e->>1)::bigint AS did, (e->>2)::int AS rev,
           e->>3 AS state, (e->>4)::int AS attempts, (e->>5)::int AS te,
           (e->>6)::float8 AS next, (e->>7)::int AS errno, (e->>8)::int AS step,
           e->>9 AS err, nullif(e->10, 'null'::jsonb) AS task, (e->>11)::float8 AS tok,
           (e->>12)::float8 AS disp, (e->>13)::float8 AS rep, (e->>14)::float8 AS heard,
           e->>15 AS att, e->>16 AS old_state, e->>17 AS reason,
           (e->>18)::smallint AS best_slot, (e->>19)::real AS pass_probability
    FROM jsonb_array_elements($1::jsonb) e
), written AS (
    UPDATE ota.campaign_devices cd SET
        state = u.state, attempts = u.attempts, transient_errors = u.te,
        next_attempt_at = to_timestamp(u.next), last_errno = u.errno, last_step = u.step,
        last_error = u.err, task = u.task, token_expires_at = to_timestamp(u.tok),
        dispatched_at = to_timestamp(u.disp), report_asked_at = to_timestamp(u.rep),
        heard_at = to_timestamp(u.heard), attempt = u.att,
        best_slot = u.best_slot, pass_probability = u.pass_probability,
        lease_owner = NULL,
        lease_until = NULL, rev = cd.rev + 1, updated_at = now()
    FROM u
    WHERE cd.campaign_id = u.cid AND cd.dev_id = u.did AND cd.rev = u.rev
    RETURNING cd.campaign_id, cd.dev_id
), events AS (
    INSERT INTO ota.events (campaign_id, dev_id, kind, from_state, to_state, reason, actor,
                            detail)
    SELECT u.cid, u.did, 'transition', u.old_state, u.state, u.reason, $2,
           CASE WHEN u.errno IS NULL AND u.step IS NULL THEN NULL
           ELSE jsonb_strip_nulls(jsonb_build_object('errno', u.errno, 'step', u.step)) END
    FROM u JOIN written w ON w.campaign_id = u.cid AND w.dev_id = u.did
    WHERE u.reason IS NOT NULL
    ORDER BY u.cid, u.did
)
SELECT campaign_id, dev_id FROM written;

-- name: members_reaching_target
-- Open memberships whose campaign's target equals the version a status reports. $1: a
-- JSON array of [dev_id, fota, sota].
SELECT cd.campaign_id, cd.dev_id
FROM (SELECT (e->>0)::bigint AS dev_id, e->>1 AS fota, e->>2 AS sota
      FROM jsonb_array_elements($1::jsonb) e) u
JOIN ota.campaign_devices cd ON cd.dev_id = u.dev_id
JOIN ota.campaigns c ON c.campaign_id = cd.campaign_id
WHERE cd.state = ANY($2)
  AND ((c.type = 'fota' AND u.fota = c.target_version)
       OR (c.type = 'sota' AND u.sota = c.target_version));

-- name: members_listening
-- These reporting devices' memberships in live campaigns that a status may move: unreachable
-- (back in line), dispatched (a lost command) or gated (a report that passes wakes it). A
-- partial index of those rows only.
SELECT cd.campaign_id, cd.dev_id
FROM ota.campaign_devices cd JOIN ota.campaigns c USING (campaign_id)
WHERE cd.dev_id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::bigint))
  AND cd.state IN ('unreachable', 'dispatched', 'gated')
  AND c.status IN ('running', 'paused');

-- name: cap_lock
-- Claims under an in-flight cap take turns (every replica), so the cap is never exceeded.
SELECT pg_advisory_xact_lock($1);

-- name: cap_busy
-- Devices being checked or in flight: over the fleet, and in campaign $1.
SELECT coalesce(sum(in_flight + checking), 0)::bigint AS fleet,
       coalesce(sum(in_flight + checking) FILTER (WHERE campaign_id = $1), 0)::bigint
           AS campaign
FROM ota.in_flight;

-- name: campaign_set_pace
-- The controller's measurement: finished per minute, recently, and the ETA (or why none).
UPDATE ota.campaigns SET rate_per_min = $2, eta_at = $3, eta_note = $4 WHERE campaign_id = $1;

-- name: health_check_rate_set
UPDATE ota.health SET check_rate_per_min = $1, check_rate_at = now();

-- name: health_check_rate
-- The fleet's recent check rate (per minute), if measured in the last day.
SELECT check_rate_per_min FROM ota.health WHERE check_rate_at > now() - interval '1 day';

-- name: checks_total
SELECT coalesce(sum(calls), 0)::bigint FROM ota.check_counts;

-- name: plan_upgrade_seconds
-- The median time from command to success of the latest successes (up to 1,000 from the
-- five newest campaigns that have some): how long one upgrade holds an in-flight slot.
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) FROM (
    SELECT extract(epoch FROM cd.updated_at - cd.dispatched_at)::float8 AS s
    FROM (SELECT campaign_id FROM ota.campaigns WHERE started_at IS NOT NULL
          ORDER BY campaign_id DESC LIMIT 5) c
    JOIN LATERAL (SELECT updated_at, dispatched_at FROM ota.campaign_devices x
                  WHERE x.campaign_id = c.campaign_id AND x.state = 'succeeded'
                    AND x.dispatched_at IS NOT NULL LIMIT 200) cd ON true) y;

-- name: members_to_retry
-- A campaign's devices in these states ($2), with this last errno ($3) if given.
SELECT campaign_id, dev_id FROM ota.campaign_devices
WHERE campaign_id = $1 AND state = ANY($2) AND ($3::int IS NULL OR last_errno = $3)
ORDER BY dev_id;

-- name: members_progress
SELECT dev_id, state, attempts, last_errno, last_step, next_attempt_at, updated_at, reason
FROM ota.device_progress WHERE campaign_id = $1 AND ($2::text IS NULL OR state = $2)
ORDER BY dev_id LIMIT $3;

-- name: check_counts_add
INSERT INTO ota.check_counts AS k (campaign_id, errno, calls)
SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[]) ORDER BY 1, 2
ON CONFLICT (campaign_id, errno) DO UPDATE SET calls = k.calls + EXCLUDED.calls;

-- name: counts_fold
-- Move pending count deltas into campaign_counts (one statement).
WITH moved AS (DELETE FROM ota.campaign_count_deltas RETURNING *)
INSERT INTO ota.campaign_counts AS k (campaign_id, wave, state, n)
SELECT campaign_id, wave, state, sum(n) FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (campaign_id, wave, state) DO UPDATE SET n = k.n + EXCLUDED.n;

-- name: counts_by_wave
SELECT wave, state, n FROM ota.campaign_state_counts WHERE campaign_id = $1;

-- name: due_backlog
-- Devices due now in running campaigns (at most 10,000 looked at) and the oldest one's lag.
SELECT count(*) AS n, coalesce(max(lag), 0) AS lag FROM (
    SELECT extract(epoch FROM now() - cd.next_attempt_at)::float8 AS lag
    FROM ota.campaign_devices cd JOIN ota.campaigns c USING (campaign_id)
    WHERE c.status = 'running' AND cd.next_attempt_at <= now()
      AND cd.state = ANY($1) AND cd.wave <= c.current_wave
    LIMIT 10000) x;

-- name: controller_lock
SELECT pg_try_advisory_xact_lock($1);

-- name: outbox_insert
-- $1: a JSON array of [dev_id, payload], queued already leased to the caller for $2
-- seconds (it publishes them at once: leasing them in a transaction of its own cost
-- PostgreSQL an UPDATE of every row, 12 ms per 1,000); rows come back in that order.
INSERT INTO ota.outbox (dev_id, payload, lease_until)
SELECT (e->>0)::bigint, e->1, now() + make_interval(secs => $2)
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS x(e, i)
ORDER BY i RETURNING id, dev_id, payload::text;

-- name: outbox_lease
-- The drain: lease the oldest $1 queued commands for $2 seconds, skipping those another
-- publisher holds. Committed before anything is published.
UPDATE ota.outbox o SET lease_until = now() + make_interval(secs => $2)
FROM (SELECT id FROM ota.outbox
      WHERE lease_until IS NULL OR lease_until < now()
      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) x
WHERE o.id = x.id
RETURNING o.id, o.dev_id, o.payload::text;

-- name: outbox_delete
-- Published and acknowledged by the broker.
DELETE FROM ota.outbox WHERE id = ANY($1);

-- name: outbox_release
-- Not published: back in the queue at once.
UPDATE ota.outbox SET lease_until = NULL WHERE id = ANY($1);

-- name: outbox_backlog
SELECT count(*) FROM ota.outbox;

-- name: relays_insert
INSERT INTO ota.relays (dev_id, token, step)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[]);

-- name: relays_lease
SELECT id, dev_id, token, step, attempts FROM ota.relays
WHERE lease_until IS NULL OR lease_until < now()
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED;

-- name: relays_hold
-- Leased (or, after a failure, retried no sooner than) $2 seconds from now.
UPDATE ota.relays SET lease_until = now() + make_interval(secs => $2),
    attempts = attempts + $3
WHERE id = ANY($1);

-- name: relays_delete
DELETE FROM ota.relays WHERE id = ANY($1);

-- name: members_renew
-- Extend this owner's lease on claimed rows still unchanged since the claim.
UPDATE ota.campaign_devices cd
SET next_attempt_at = now() + make_interval(secs => $4),
    lease_until = now() + make_interval(secs => $4)
FROM unnest($1::bigint[], $2::bigint[], $5::int[]) AS k(c, d, rev)
WHERE cd.campaign_id = k.c AND cd.dev_id = k.d AND cd.rev = k.rev AND cd.lease_owner = $3;

-- name: health_gap_end
SELECT extract(epoch FROM gap_end)::float8 FROM ota.health;

-- name: health_mark_gap
-- Our side was unhealthy until now.
UPDATE ota.health SET gap_end = greatest(gap_end, now());

-- name: replica_beat
INSERT INTO ota.replicas AS r (owner, ingest_ok, max_in_flight) VALUES ($1, $2, $3)
ON CONFLICT (owner) DO UPDATE SET beat_at = now(), ingest_ok = EXCLUDED.ingest_ok,
    max_in_flight = EXCLUDED.max_in_flight;

-- name: replica_gone
DELETE FROM ota.replicas WHERE owner = $1;

-- name: replicas_unhealthy
-- Replicas whose heartbeat is older than $1 seconds or whose ingest is disconnected.
SELECT owner, extract(epoch FROM now() - beat_at)::float8 AS silent, ingest_ok
FROM ota.replicas WHERE beat_at < now() - make_interval(secs => $1) OR NOT ingest_ok
ORDER BY owner;

-- name: replicas_forget
-- A replica silent for longer than its broker session can live: its share is gone.
DELETE FROM ota.replicas WHERE beat_at < now() - make_interval(secs => $1) RETURNING owner;

-- name: events_partitions
SELECT ota.ensure_event_partitions((now() AT TIME ZONE 'UTC')::date,
                                   (now() AT TIME ZONE 'UTC')::date + 3);

-- name: events_retention
SELECT ota.drop_event_partitions($1);

-- name: devices_count_reported
-- How many of the devices $1..$2 have reported a FOTA version (a range of the key, not an
-- array of ids: with 1,000,000 ids in an array one count took minutes).
SELECT count(*) FROM ota.devices WHERE dev_id BETWEEN $1 AND $2 AND fota_version IS NOT NULL;

-- name: summary_failures
-- The failed devices by reason, as ota.failure_reasons groups them.
SELECT coalesce('errno ' || errno::text, '') || coalesce(' ' || reason, '') AS reason,
       sum(devices)::bigint AS n
FROM ota.failure_reasons WHERE campaign_id = $1
GROUP BY 1 ORDER BY 2 DESC;

-- name: summary_gate_retries
SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND to_state = 'gated';

-- name: summary_install_retries
SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND reason LIKE 'step 2%failed%';

-- name: summary_checks
SELECT errno, calls FROM ota.check_outcomes WHERE campaign_id = $1 ORDER BY errno;

-- name: devices_seed
-- Registered, reporting devices 1..$1 (benchmarks and staging).
INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power, status_at, last_seen)
SELECT g, 'China Mobile', 'M5310', '1.2', 20, 80, now(), now()
FROM generate_series(1, $1::bigint) g;

-- name: devices_known
-- $1: a JSON array of dev_ids (an index scan over = ANY, as with an array parameter).
SELECT dev_id FROM ota.devices
WHERE dev_id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::bigint));

-- name: events_list
-- A campaign's events after $3 (event id), optionally one device's ($2), oldest first.
SELECT event_id, at, campaign_id, dev_id, kind, from_state, to_state, reason, actor, detail
FROM ota.events
WHERE campaign_id = $1 AND ($2::bigint IS NULL OR dev_id = $2) AND event_id > $3
ORDER BY event_id LIMIT $4;

-- name: device_campaigns
-- A device's memberships, newest campaign first, with its last event in each.
SELECT cd.campaign_id, c.name, c.status, cd.state, cd.attempts, dp.reason,
       (SELECT e.at FROM ota.events e WHERE e.dev_id = cd.dev_id
          AND e.campaign_id = cd.campaign_id ORDER BY e.at DESC LIMIT 1) AS last_event_at,
       (SELECT e.reason FROM ota.events e WHERE e.dev_id = cd.dev_id
          AND e.campaign_id = cd.campaign_id ORDER BY e.at DESC LIMIT 1) AS last_event
FROM ota.campaign_devices cd
JOIN ota.campaigns c USING (campaign_id)
JOIN ota.device_progress dp ON dp.campaign_id = cd.campaign_id AND dp.dev_id = cd.dev_id
WHERE cd.dev_id = $1
ORDER BY cd.campaign_id DESC LIMIT 20;

-- name: campaign_update_rules
-- Change a live campaign's rules: each pair is (change it?, new value).
UPDATE ota.campaigns SET
    max_per_minute = CASE WHEN $2 THEN $3::int ELSE max_per_minute END,
    wave_success_pct = CASE WHEN $4 THEN $5::numeric ELSE wave_success_pct END,
    abort_failure_pct = CASE WHEN $6 THEN $7::numeric ELSE abort_failure_pct END,
    abort_min_finished = CASE WHEN $8 THEN $9::int ELSE abort_min_finished END,
    abort_action = CASE WHEN $10 THEN $11::text ELSE abort_action END,
    dispatch_timeout = CASE WHEN $12 THEN $13::float8 ELSE dispatch_timeout END,
    unreachable_after = CASE WHEN $14 THEN $15::float8 ELSE unreachable_after END,
    max_in_flight = CASE WHEN $16 THEN $17::int ELSE max_in_flight END,
    windows = CASE WHEN $18 THEN $19::text[] ELSE windows END,
    timezone = CASE WHEN $20 THEN $21::text ELSE timezone END,
    max_per_cell = CASE WHEN $22 THEN $23::int ELSE max_per_cell END,
    gating = CASE WHEN $24 THEN $25::text ELSE gating END,
    updated_at = now()
WHERE campaign_id = $1;

-- name: plan_selection
-- A plan's one pass over the fleet (nothing written): the selector's devices ($1..$7 as the
-- enrolment's) by manufacturer, model and from-version, each counted as on the target, of a
-- module OneNET cannot check, upgraded by another running or paused campaign of the type, or
-- enrolled; of the enrolled, how many never reported what a check needs, have a status
-- fresher than $8 s, and would pass a gate of signal > $9 and power > $10.
SELECT s.manuf, s.model, s.version AS from_version,
       count(*) FILTER (WHERE s.on_target) AS on_target,
       count(*) FILTER (WHERE NOT s.on_target AND NOT s.checkable) AS unknown_module,
       count(*) FILTER (WHERE NOT s.on_target AND s.checkable AND b.dev_id IS NOT NULL)
           AS busy,
       count(*) FILTER (WHERE e.enrolled) AS devices,
       count(*) FILTER (WHERE e.enrolled AND (s.manuf IS NULL OR s.model IS NULL
                                              OR s.version IS NULL)) AS unreported,
       count(*) FILTER (WHERE e.enrolled AND s.status_at > now() - make_interval(secs => $8))
           AS fresh,
       count(*) FILTER (WHERE e.enrolled AND s.status_at > now() - make_interval(secs => $8)
                          AND s.signal > $9::int AND s.power > $10::int) AS would_pass
FROM ota.selected_all($7, $2, $3, $4, $5, $6, '-infinity') s
LEFT JOIN (SELECT DISTINCT dev_id FROM ota.busy_devices
           WHERE type = $7 AND campaign_id <> $1) b ON b.dev_id = s.dev_id
CROSS JOIN LATERAL (SELECT NOT s.on_target AND s.checkable AND b.dev_id IS NULL
                    AS enrolled) e
GROUP BY 1, 2, 3;

-- name: plan_sample
-- Radio profiles of the selector's devices among $5 (a sample of the registry: a plan's gate
-- outlook reads a sample, not the fleet).
SELECT s.manuf, s.model, s.version AS from_version, s.radio
FROM ota.selected_all($7, $2, $3, $4, $5, $6, '-infinity') s
WHERE NOT s.on_target AND s.checkable AND $1::bigint IS NOT NULL;

-- name: devices_sample
-- About $1 percent of the registry's devices, whole pages at a time (the same on every call).
SELECT dev_id FROM ota.devices TABLESAMPLE SYSTEM ($1) REPEATABLE (1);

-- name: devices_estimate
-- The registry's size as the planner knows it (no count: that reads the table).
SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'ota.devices'::regclass;

-- name: status_campaigns
-- The status page: live campaigns, then the most recent others, $1 in all.
SELECT * FROM ota.campaign_progress
ORDER BY (status IN ('running', 'paused')) DESC, campaign_id DESC LIMIT $1;

-- name: status_waves
SELECT campaign_id, wave, opened, total, pending, in_progress, succeeded, failed, no_task,
       unreachable
FROM ota.wave_progress WHERE campaign_id = ANY($1) ORDER BY campaign_id, wave;

-- name: status_failures
-- The top $2 failure reasons of each campaign.
SELECT campaign_id, reason, devices FROM (
    SELECT campaign_id, reason, devices,
           row_number() OVER (PARTITION BY campaign_id ORDER BY devices DESC, reason) AS r
    FROM ota.failure_reasons WHERE campaign_id = ANY($1)) x
WHERE r <= $2 ORDER BY campaign_id, devices DESC, reason;

-- name: status_events
-- The last $2 events of a campaign, newest first.
SELECT at, dev_id, kind, from_state, to_state, reason
FROM ota.events WHERE campaign_id = $1 ORDER BY at DESC, event_id DESC LIMIT $2;

-- name: status_fleet
SELECT in_flight, checking, max_in_flight FROM ota.fleet_in_flight;

-- name: transitions_fold
-- Move per-minute transition deltas older than the current minute into transition_minutes.
WITH moved AS (DELETE FROM ota.transition_minute_deltas
               WHERE minute < date_trunc('minute', now()) RETURNING *)
INSERT INTO ota.transition_minutes AS k (campaign_id, minute, to_state, cause, n)
SELECT campaign_id, minute, to_state, cause, sum(n) FROM moved
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (campaign_id, minute, to_state, cause) DO UPDATE SET n = k.n + EXCLUDED.n;

-- name: db_now
SELECT now();

-- name: accounts_active
-- Those of these devices ($1 bigint[]) that have an account not revoked.
SELECT dev_id FROM ota.mqtt_accounts
WHERE dev_id = ANY($1::bigint[]) AND revoked_at IS NULL;

-- name: accounts_stage
-- A temporary table the new secrets' stored forms are copied into (COPY, not parameters:
-- a million rows in seconds), then moved into the accounts in one statement.
CREATE TEMPORARY TABLE account_stage (
    username text, dev_id bigint, role text, salt text, hash bytea
) ON COMMIT DROP;

-- name: accounts_from_stage
-- New accounts, or new secrets for existing ones ($1: iterations). Returns how many rows
-- were created and how many rotated.
WITH up AS (
    INSERT INTO ota.mqtt_accounts AS a (username, dev_id, role, salt, hash, iterations)
    SELECT username, dev_id, role, salt, hash, $1 FROM account_stage ORDER BY username
    ON CONFLICT (username) DO UPDATE SET
        salt = EXCLUDED.salt, hash = EXCLUDED.hash, iterations = EXCLUDED.iterations,
        rotated_at = now(), revoked_at = NULL,
        change = nextval('ota.mqtt_account_change')
    RETURNING (xmax = 0) AS created
)
SELECT count(*) FILTER (WHERE created) AS created,
       count(*) FILTER (WHERE NOT created) AS rotated
FROM up;

-- name: accounts_revoke
-- Revoke these devices' accounts ($1 bigint[]); returns the ids revoked now.
UPDATE ota.mqtt_accounts SET revoked_at = now(), change = nextval('ota.mqtt_account_change')
WHERE dev_id = ANY($1::bigint[]) AND revoked_at IS NULL
RETURNING dev_id;

-- name: accounts_registered
-- A page of registered devices (ids after $1, at most $2), optionally by manufacturer and
-- model ($3, $4), and only those without an active account unless $5.
SELECT d.dev_id FROM ota.devices d
WHERE d.dev_id > $1
  AND ($3::text IS NULL OR d.manuf = $3) AND ($4::text IS NULL OR d.model = $4)
  AND ($5 OR NOT EXISTS (SELECT 1 FROM ota.mqtt_accounts a
                         WHERE a.dev_id = d.dev_id AND a.revoked_at IS NULL))
ORDER BY d.dev_id
LIMIT $2;

-- name: accounts_changed
-- The accounts a notification named (change numbers $1..$2), as they are now: a revoked one
-- comes with revoked = true and leaves the file.
SELECT a.username, a.role, a.revoked_at IS NOT NULL AS revoked,
       ota.mosquitto_line(a) AS line
FROM ota.mqtt_accounts a
WHERE a.change BETWEEN $1 AND $2;

-- name: accounts_lines
-- Every active account of role $1 as a password-file line (read with COPY; no order: a
-- broker reads the file into a hash table).
SELECT ota.mosquitto_line(a) FROM ota.mqtt_accounts a
WHERE a.role = $1 AND a.revoked_at IS NULL;

-- name: accounts_count
SELECT count(*) FILTER (WHERE role = 'device' AND revoked_at IS NULL) AS devices,
       count(*) FILTER (WHERE role = 'orchestrator' AND revoked_at IS NULL) AS orchestrators,
       count(*) FILTER (WHERE revoked_at IS NOT NULL) AS revoked
FROM ota.mqtt_accounts;

-- name: accounts_service_exists
SELECT EXISTS (SELECT 1 FROM ota.mqtt_accounts
               WHERE username = $1 AND role = 'orchestrator' AND revoked_at IS NULL);

-- name: slot_try
-- A replica's slot ($1: its host's key, $2: the slot), held by its session until it ends.
SELECT pg_try_advisory_lock($1::int, $2::int);

-- name: modules_sync
-- OneNET's module table ($1: a JSON array of [manuf, model]), replacing what was there.
WITH wanted AS (
    SELECT e->>0 AS manuf, e->>1 AS model FROM jsonb_array_elements($1::jsonb) e
), gone AS (
    DELETE FROM ota.modules m
    WHERE NOT EXISTS (SELECT 1 FROM wanted w WHERE w.manuf = m.manuf AND w.model = m.model)
)
INSERT INTO ota.modules (manuf, model) SELECT manuf, model FROM wanted
ON CONFLICT DO NOTHING;

-- name: plan_unknown_module
-- Selected devices left out because OneNET's tables do not know their module.
SELECT count(*) FROM ota.selected_any($7, $2, $3, $4, $5, $6, '-infinity') s
WHERE NOT s.checkable AND $1::bigint IS NOT NULL;

-- name: campaign_waits
-- What campaign $1 waits on: how many of its open waves' devices are not finished (from the
-- kept counts: at 1,000,000 devices counting the rows took 256 ms), and the $2 it waits for
-- longest (the latest next check or deadline first): the top of each open wave's rows in
-- the open rows' index, read backwards (at 10,000,000 a plan over the whole campaign read
-- every row: 1.6 s).
SELECT w.total, d.dev_id, d.state, d.until, d.reason, d.wave
FROM (SELECT coalesce(sum(p.pending + p.in_progress), 0) AS total
      FROM ota.wave_progress p JOIN ota.campaigns c USING (campaign_id)
      WHERE p.campaign_id = $1 AND p.opened AND c.status IN ('running', 'paused')) w
LEFT JOIN LATERAL (
    SELECT t.* FROM ota.campaigns c
    CROSS JOIN LATERAL generate_series(0, c.current_wave) AS o(wave)
    CROSS JOIN LATERAL (
        SELECT cd.dev_id, cd.state, cd.next_attempt_at AS until, cd.last_error AS reason,
               cd.wave + 1 AS wave
        FROM ota.campaign_devices cd
        WHERE cd.campaign_id = c.campaign_id AND cd.wave = o.wave
          AND cd.state IN ('pending', 'checking', 'gated', 'dispatched', 'downloading',
                           'upgrading')
          AND cd.next_attempt_at IS NOT NULL
        ORDER BY cd.next_attempt_at DESC LIMIT $2) t
    WHERE c.campaign_id = $1 AND c.status IN ('running', 'paused')
    ORDER BY t.until DESC, t.dev_id LIMIT $2) d ON true;

-- name: cell_busy
-- Devices checking or in flight in these cells ($1 text[]), fleet-wide.
SELECT cell, count(*) AS busy FROM ota.campaign_devices
WHERE state IN ('checking', 'dispatched', 'downloading', 'upgrading')
  AND cell = ANY($1::text[])
GROUP BY cell;

-- name: gate_outlook
-- A campaign's devices waiting for signal or power, by the slot their profile likes best
-- (NULL: no history).
SELECT best_hour, count(*) AS devices, avg(pass_probability)::float8 AS pass_probability,
       min(next_attempt_at) AS next_check
FROM ota.gate_outlook WHERE campaign_id = $1
GROUP BY best_hour ORDER BY best_hour NULLS LAST;

-- name: cell_load_top
-- The $1 busiest cells, fleet-wide.
SELECT cell, ce_level, in_flight FROM ota.cell_load ORDER BY in_flight DESC, cell LIMIT $1;

-- name: rehearse_selection
-- The devices a campaign would enrol (those plan_selection counts enrolled), each with what
-- a rehearsal models it by, and the hash the enrolment ranks them by.
SELECT s.dev_id, hashint8(s.dev_id) AS h, s.manuf, s.model, s.version AS from_version,
       s.signal, s.power, date_part('epoch', s.status_at) AS status_at,
       date_part('epoch', x.last_seen) AS last_seen,
       array_send(s.radio) AS radio,   -- its wire form: read as one array, not 120 ints
       x.cell, x.ce_level
FROM ota.selected_all($7, $2, $3, $4, $5, $6, '-infinity') s
JOIN ota.devices x USING (dev_id)
WHERE NOT s.on_target AND s.checkable
  AND NOT EXISTS (SELECT 1 FROM ota.busy_devices b
                  WHERE b.dev_id = s.dev_id AND b.type = $7 AND b.campaign_id <> $1);

-- name: rehearse_history
-- What the $3 newest campaigns of type $1 that started tell of each (manufacturer, model,
-- from-version) group, from at most $2 ended members each: how their checks were answered
-- (a task, no task, refused with which errno), transient errors, the task's gate and
-- budget, how long a success took from its command, how many failed their download or
-- install, how many went silent once commanded.
WITH recent AS (
    SELECT campaign_id FROM ota.campaigns
    WHERE type = $1 AND started_at IS NOT NULL ORDER BY campaign_id DESC LIMIT $3
), m AS (
    SELECT x.* FROM recent r CROSS JOIN LATERAL (
        SELECT cd.dev_id, cd.from_version, cd.state, cd.last_errno, cd.last_step, cd.task,
               cd.transient_errors, cd.dispatched_at, cd.updated_at
        FROM ota.campaign_devices cd
        WHERE cd.campaign_id = r.campaign_id AND cd.from_version IS NOT NULL
          AND cd.state IN ('succeeded', 'failed', 'no_task', 'unreachable')
        LIMIT $2) x
)
SELECT d.manuf, d.model, m.from_version, count(*) AS members,
       count(*) FILTER (WHERE m.task IS NOT NULL) AS tasked,
       count(*) FILTER (WHERE m.state = 'no_task') AS no_task,
       coalesce(array_agg(m.last_errno) FILTER (
           WHERE m.state = 'failed' AND m.task IS NULL AND m.last_errno NOT IN (0, 7)),
           '{}') AS refused,
       coalesce(sum(m.transient_errors), 0)::bigint AS transient,
       count(*) FILTER (WHERE m.dispatched_at IS NOT NULL) AS commanded,
       count(*) FILTER (WHERE m.dispatched_at IS NOT NULL AND m.state = 'unreachable')
           AS silent,
       count(*) FILTER (WHERE m.state = 'failed' AND m.last_step BETWEEN 102 AND 107)
           AS download_failed,
       count(*) FILTER (WHERE m.state = 'failed' AND m.last_step BETWEEN 202 AND 206)
           AS install_failed,
       (array_agg(m.task ORDER BY m.updated_at DESC) FILTER (WHERE m.task IS NOT NULL))[1]
           AS task,
       coalesce((array_agg(date_part('epoch', m.updated_at - m.dispatched_at) ORDER BY m.dev_id)
                 FILTER (WHERE m.state = 'succeeded' AND m.dispatched_at IS NOT NULL))[1:200],
                '{}') AS upgrade_seconds
FROM m JOIN ota.devices d USING (dev_id)
GROUP BY 1, 2, 3;

-- name: rehearse_attempts
-- Every upgrade command of the $2 newest campaigns of type $1 that started, and every failed
-- download and install reported, per (manufacturer, model, from-version) group, from at most
-- $3 events of each campaign: a failure retried into a success still counts (the members'
-- final states cannot tell it).
WITH recent AS (
    SELECT campaign_id FROM ota.campaigns
    WHERE type = $1 AND started_at IS NOT NULL ORDER BY campaign_id DESC LIMIT $2
), e AS (
    SELECT x.* FROM recent r CROSS JOIN LATERAL (
        SELECT ev.campaign_id, ev.dev_id, ev.to_state,
               -- a row keeps its last step: only a transition out of flight reports it
               CASE WHEN ev.from_state IN ('dispatched', 'downloading', 'upgrading')
                    THEN (ev.detail->>'step')::int END AS step
        FROM ota.events ev
        WHERE ev.campaign_id = r.campaign_id AND ev.dev_id IS NOT NULL
          AND (ev.to_state = 'dispatched' OR ev.detail ? 'step')
        ORDER BY ev.at LIMIT $3) x
)
SELECT d.manuf, d.model, cd.from_version,
       count(*) FILTER (WHERE e.to_state = 'dispatched') AS commands,
       count(*) FILTER (WHERE e.step BETWEEN 102 AND 107) AS download_failed,
       count(*) FILTER (WHERE e.step BETWEEN 202 AND 206) AS install_failed
FROM e JOIN ota.campaign_devices cd USING (campaign_id, dev_id)
JOIN ota.devices d ON d.dev_id = e.dev_id
WHERE cd.from_version IS NOT NULL
GROUP BY 1, 2, 3;
