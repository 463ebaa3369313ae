-- 011: broker accounts as data. PostgreSQL is the source of truth for every broker:
-- Mosquitto's password and ACL files are written from this table (orchestrator broker sync),
-- EMQX reads ota.mqtt_auth directly. A secret is stored only as PBKDF2-HMAC-SHA512 over a
-- 12-character salt (domain/accounts.py says why that form suits both brokers).

CREATE TABLE ota.mqtt_accounts (
    username    text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9_.-]{1,64}$'),
    -- a device's account: its user name is its id; removing the device removes the account
    dev_id      bigint UNIQUE REFERENCES ota.devices (dev_id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('device', 'orchestrator')),
    salt        text NOT NULL CHECK (length(salt) = 12),
    hash        bytea NOT NULL CHECK (length(hash) = 64),
    iterations  integer NOT NULL CHECK (iterations > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz,
    revoked_at  timestamptz,
    -- every change takes the next number: a watcher reads what changed since the last it saw
    change      bigint NOT NULL,
    CHECK ((role = 'device') = (dev_id IS NOT NULL)),
    CHECK (dev_id IS NULL OR username = dev_id::text),
    -- an all-digit user name is a device's, never a service account's
    CHECK (role = 'device' OR username !~ '^[0-9]+$')
);
CREATE SEQUENCE ota.mqtt_account_change OWNED BY ota.mqtt_accounts.change;
ALTER TABLE ota.mqtt_accounts
    ALTER COLUMN change SET DEFAULT nextval('ota.mqtt_account_change');
CREATE INDEX mqtt_accounts_change_idx ON ota.mqtt_accounts (change);

-- the account as a line of Mosquitto's password file (PostgreSQL's base64 wraps at 76
-- characters: the 88 of the hash are joined again)
CREATE FUNCTION ota.mosquitto_line(a ota.mqtt_accounts) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT a.username || ':$7$' || a.iterations || '$'
           || encode(convert_to(a.salt, 'UTF8'), 'base64') || '$'
           || translate(encode(a.hash, 'base64'), E'\n', '')
$$;

-- A broker-file watcher LISTENs here. Notifications arrive at commit, in commit order: each
-- names the change numbers its statement gave ('LO:HI'), so the watcher reads exactly those
-- rows, whatever other transactions took numbers in between; a deletion says 'full' (the
-- rows are gone: the watcher writes everything again).
CREATE FUNCTION ota.mqtt_accounts_notify_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo bigint;
    hi bigint;
BEGIN
    SELECT min(change), max(change) INTO lo, hi FROM changed_rows;
    IF lo IS NOT NULL THEN
        PERFORM pg_notify('ota_mqtt_accounts', lo || ':' || hi);
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION ota.mqtt_accounts_notify_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ota_mqtt_accounts', 'full');
    RETURN NULL;
END $$;
CREATE TRIGGER mqtt_accounts_inserted AFTER INSERT ON ota.mqtt_accounts
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ota.mqtt_accounts_notify_rows();
CREATE TRIGGER mqtt_accounts_updated AFTER UPDATE ON ota.mqtt_accounts
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ota.mqtt_accounts_notify_rows();
CREATE TRIGGER mqtt_accounts_deleted AFTER DELETE ON ota.mqtt_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ota.mqtt_accounts_notify_full();

-- EMQX's PostgreSQL authenticator (deploy/emqx/): the columns its documented query reads
-- (password_hash, salt, is_superuser), plus the role its query uses to bind client ids.
-- Orchestrator accounts are superusers: authorization rules are for devices.
CREATE VIEW ota.mqtt_auth AS
SELECT username, encode(hash, 'hex') AS password_hash, salt, role = 'orchestrator' AS is_superuser,
       role
FROM ota.mqtt_accounts
WHERE revoked_at IS NULL;
