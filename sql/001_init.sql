-- 001: device registry, campaigns, per-device campaign state, events, counters, views.
-- All objects live in the schema "ota". Views are the dashboard contract; tables may change.

CREATE TABLE ota.devices (
    dev_id        bigint PRIMARY KEY CHECK (dev_id > 0),
    manuf         text,
    model         text,
    fota_version  text,
    sota_version  text,
    signal        integer,
    power         integer,
    status_at     timestamptz,          -- when signal/power were last reported
    last_seen     timestamptz,          -- any message from the device
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_model_idx ON ota.devices (manuf, model);

CREATE TABLE ota.campaigns (
    campaign_id         bigserial PRIMARY KEY,
    name                text NOT NULL,
    status              text NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'running', 'paused', 'completed', 'cancelled', 'aborted')),
    type                text NOT NULL CHECK (type IN ('fota', 'sota')),
    target_version      text NOT NULL,
    selector            jsonb NOT NULL DEFAULT '{}',
    waves               integer[] NOT NULL DEFAULT '{100}',
    wave_success_pct    numeric NOT NULL DEFAULT 0,
    current_wave        integer NOT NULL DEFAULT 0,
    max_per_minute      integer CHECK (max_per_minute > 0),
    abort_failure_pct   numeric CHECK (abort_failure_pct >= 0 AND abort_failure_pct <= 100),
    abort_min_finished  integer NOT NULL DEFAULT 1,
    continuous          boolean NOT NULL DEFAULT false,
    status_reason       text,
    rate_tokens         double precision NOT NULL DEFAULT 0,
    rate_at             timestamptz NOT NULL DEFAULT now(),
    wave_bounds         integer[] NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- No foreign keys here on purpose: rows are only made by enrolment, which selects them from
-- ota.devices for an existing campaign, and a per-row FK check would triple the cost of
-- enrolling a million devices.
CREATE TABLE ota.campaign_devices (
    campaign_id       bigint NOT NULL,
    dev_id            bigint NOT NULL,
    wave              integer NOT NULL DEFAULT 0,
    state             text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'checking', 'gated', 'dispatched', 'downloading',
                         'upgrading', 'succeeded', 'failed', 'no_task', 'cancelled')),
    attempts          integer NOT NULL DEFAULT 0,     -- task retry budget used
    transient_errors  integer NOT NULL DEFAULT 0,     -- errno 7 / transport, own budget
    next_attempt_at   timestamptz,
    lease_owner       text,
    lease_until       timestamptz,
    last_errno        integer,
    last_step         integer,
    last_error        text,
    task              jsonb,                          -- the check answer's data
    token_expires_at  timestamptz,
    dispatched_at     timestamptz,
    report_asked_at   timestamptz,
    rev               integer NOT NULL DEFAULT 0,     -- optimistic concurrency
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, dev_id)
);
-- due work, claimed with FOR UPDATE SKIP LOCKED by this index
CREATE INDEX campaign_devices_due_idx ON ota.campaign_devices (campaign_id, next_attempt_at)
    WHERE state IN ('pending', 'checking', 'gated', 'dispatched', 'downloading', 'upgrading');
CREATE INDEX campaign_devices_dev_idx ON ota.campaign_devices (dev_id);

-- append-only audit log: every transition, with its reason
CREATE TABLE ota.events (
    event_id     bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    campaign_id  bigint,
    dev_id       bigint,
    kind         text NOT NULL,
    from_state   text,
    to_state     text,
    reason       text,
    actor        text,
    detail       jsonb
);
CREATE INDEX events_campaign_idx ON ota.events (campaign_id, at);

-- kept counts, so progress never re-counts a million rows. Writers append deltas (no hot
-- row, no lock order to get wrong); the controller folds them into campaign_counts.
CREATE TABLE ota.campaign_counts (
    campaign_id  bigint NOT NULL REFERENCES ota.campaigns ON DELETE CASCADE,
    wave         integer NOT NULL,
    state        text NOT NULL,
    n            bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, wave, state)
);
CREATE TABLE ota.campaign_count_deltas (
    campaign_id  bigint NOT NULL,
    wave         integer NOT NULL,
    state        text NOT NULL,
    n            bigint NOT NULL
);

CREATE TABLE ota.check_counts (
    campaign_id  bigint NOT NULL REFERENCES ota.campaigns ON DELETE CASCADE,
    errno        integer NOT NULL,       -- -1: transport error, timeout or garbage answer
    calls        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, errno)
);

-- commands to publish (cancel), written in the transaction that decides them
CREATE TABLE ota.outbox (
    id           bigserial PRIMARY KEY,
    dev_id       bigint NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION ota.count_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO ota.campaign_count_deltas (campaign_id, wave, state, n)
        SELECT campaign_id, wave, state, count(*) FROM new_rows GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO ota.campaign_count_deltas (campaign_id, wave, state, n)
        SELECT campaign_id, wave, state, sum(d) FROM (
            SELECT campaign_id, wave, state, 1 AS d FROM new_rows
            UNION ALL
            SELECT campaign_id, wave, state, -1 AS d FROM old_rows
        ) x GROUP BY 1, 2, 3 HAVING sum(d) <> 0;
    ELSE
        INSERT INTO ota.campaign_count_deltas (campaign_id, wave, state, n)
        SELECT campaign_id, wave, state, -count(*) FROM old_rows GROUP BY 1, 2, 3;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER campaign_devices_count_ins AFTER INSERT ON ota.campaign_devices
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ota.count_states();
CREATE TRIGGER campaign_devices_count_upd AFTER UPDATE ON ota.campaign_devices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ota.count_states();
CREATE TRIGGER campaign_devices_count_del AFTER DELETE ON ota.campaign_devices
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ota.count_states();

-- counts by campaign, wave and state: folded counts plus deltas not yet folded
CREATE VIEW ota.campaign_state_counts AS
SELECT campaign_id, wave, state, sum(n)::bigint AS n FROM (
    SELECT campaign_id, wave, state, n FROM ota.campaign_counts
    UNION ALL
    SELECT campaign_id, wave, state, n FROM ota.campaign_count_deltas
) x GROUP BY 1, 2, 3;

-- dashboard contract (contract.md section 4)
CREATE VIEW ota.campaign_progress AS
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
       c.started_at, c.finished_at
FROM ota.campaigns c
LEFT JOIN ota.campaign_state_counts k ON k.campaign_id = c.campaign_id
GROUP BY c.campaign_id;

CREATE VIEW ota.device_progress AS
SELECT campaign_id, dev_id, state, attempts, last_errno, last_step, next_attempt_at, updated_at
FROM ota.campaign_devices;

CREATE VIEW ota.check_outcomes AS
SELECT campaign_id, errno, calls FROM ota.check_counts;
