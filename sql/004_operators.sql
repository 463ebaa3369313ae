-- 004: operators in control.
--  * the abort rule names its action (pause, or abort: status aborted, in-flight devices
--    get cancel);
--  * resuming a campaign records the evidence the operator accepted: the abort rule then
--    judges only failures after that point, and the wave gate of the accepted wave is open;
--  * ota.device_progress gains "reason": why the device is where it is, with the errno's
--    meaning (views only gain columns).
ALTER TABLE ota.campaigns
    ADD COLUMN abort_action text NOT NULL DEFAULT 'pause'
        CHECK (abort_action IN ('pause', 'abort')),
    ADD COLUMN rule_failed_base bigint NOT NULL DEFAULT 0,
    ADD COLUMN rule_finished_base bigint NOT NULL DEFAULT 0,
    ADD COLUMN gate_accepted_wave integer NOT NULL DEFAULT -1;

CREATE FUNCTION ota.errno_text(errno integer) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE errno
        WHEN 0 THEN 'succ'
        WHEN 1 THEN 'authentication failed (or the device does not exist)'
        WHEN 2 THEN 'request parameter error'
        WHEN 7 THEN 'OneNET internal error'
        WHEN 8 THEN 'task failed: manuf or model inconsistent'
        WHEN 9 THEN 'task failed: version inconsistent (differential package)'
        WHEN 11 THEN 'no upgrade task for this type'
        WHEN 27 THEN 'version number format error'
        WHEN 32 THEN 'task exists but no matching differential package (no reported version)'
        WHEN -1 THEN 'no answer (transport error, timeout or garbage)'
    END
$$;

CREATE OR REPLACE VIEW ota.device_progress AS
SELECT campaign_id, dev_id, state, attempts, last_errno, last_step, next_attempt_at, updated_at,
       nullif(concat_ws('; ', last_error,
                        CASE WHEN last_errno IS NOT NULL AND last_errno <> 0
                             THEN 'errno ' || last_errno || ': ' || ota.errno_text(last_errno)
                        END), '') AS reason
FROM ota.campaign_devices;
