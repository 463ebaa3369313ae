-- 002: the record under faults.
--  * campaign_devices.heard_at: when we last commanded the device or heard its progress, so
--    a dispatch timeout can tell "the device went quiet" from "we were not listening";
--  * ota.health / ota.replicas: when our side was last unhealthy (a replica stale or its
--    ingest disconnected, the database unreachable), maintained by the replicas;
--  * outbox leases, so commands are published outside any transaction;
--  * ota.relays: progress steps to pass on to OneNET, persistent, retried behind the breaker;
--  * ota.events partitioned by day (retention drops whole partitions), indexed by device.

ALTER TABLE ota.campaign_devices ADD COLUMN heard_at timestamptz;
UPDATE ota.campaign_devices SET heard_at = dispatched_at WHERE dispatched_at IS NOT NULL;

CREATE TABLE ota.health (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    gap_end  timestamptz NOT NULL DEFAULT now()   -- our side healthy since (at best)
);
INSERT INTO ota.health DEFAULT VALUES;

CREATE TABLE ota.replicas (
    owner         text PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    beat_at       timestamptz NOT NULL DEFAULT now(),
    ingest_ok     boolean NOT NULL DEFAULT false
);

ALTER TABLE ota.outbox ADD COLUMN lease_until timestamptz;

CREATE TABLE ota.relays (
    id           bigserial PRIMARY KEY,
    dev_id       bigint NOT NULL,
    token        text NOT NULL,
    step         integer NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- events, partitioned by day
ALTER TABLE ota.events RENAME TO events_unpartitioned;
ALTER INDEX ota.events_campaign_idx RENAME TO events_unpartitioned_campaign_idx;
CREATE TABLE ota.events (
    event_id     bigint NOT NULL DEFAULT nextval('ota.events_event_id_seq'),
    at           timestamptz NOT NULL DEFAULT now(),
    campaign_id  bigint,
    dev_id       bigint,
    kind         text NOT NULL,
    from_state   text,
    to_state     text,
    reason       text,
    actor        text,
    detail       jsonb,
    PRIMARY KEY (event_id, at)
) PARTITION BY RANGE (at);
ALTER SEQUENCE ota.events_event_id_seq OWNED BY ota.events.event_id;
CREATE INDEX events_campaign_idx ON ota.events (campaign_id, at);
CREATE INDEX events_dev_idx ON ota.events (dev_id, at);
-- a safety net: an event outside every daily partition is still recorded
CREATE TABLE ota.events_default PARTITION OF ota.events DEFAULT;

-- daily partitions (UTC days) from first_day to last_day inclusive, those not there yet
CREATE FUNCTION ota.ensure_event_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d date := first_day;
    made integer := 0;
    name text;
BEGIN
    WHILE d <= last_day LOOP
        name := 'events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass('ota.' || name) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE ota.%I PARTITION OF ota.events'
                               ' FOR VALUES FROM (%L) TO (%L)', name,
                               d::text || ' 00:00:00+00', (d + 1)::text || ' 00:00:00+00');
                made := made + 1;
            EXCEPTION WHEN check_violation THEN
                -- rows for that day already sit in the default partition: leave them there
                NULL;
            END;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN made;
END $$;

-- drop daily partitions wholly older than keep_days; returns how many were dropped
CREATE FUNCTION ota.drop_event_partitions(keep_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = p.relnamespace
        WHERE n.nspname = 'ota' AND p.relname = 'events'
          AND c.relname ~ '^events_[0-9]{8}$'
          AND to_date(substr(c.relname, 8), 'YYYYMMDD') + 1
              <= (now() AT TIME ZONE 'UTC')::date - keep_days
    LOOP
        EXECUTE format('DROP TABLE ota.%I', r.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

SELECT ota.ensure_event_partitions(
    coalesce((SELECT (min(at) AT TIME ZONE 'UTC')::date FROM ota.events_unpartitioned),
             (now() AT TIME ZONE 'UTC')::date),
    (now() AT TIME ZONE 'UTC')::date + 3);
INSERT INTO ota.events SELECT * FROM ota.events_unpartitioned;
DROP TABLE ota.events_unpartitioned;
