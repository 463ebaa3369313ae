-- 007: a campaign may set its own dispatch timeout (NULL: ORCH_DISPATCH_TIMEOUT).
ALTER TABLE ota.campaigns ADD COLUMN dispatch_timeout double precision
    CHECK (dispatch_timeout > 0);
