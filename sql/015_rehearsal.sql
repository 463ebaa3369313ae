-- Rehearsal: what past campaigns tell of each (manufacturer, model, from-version) group
-- needs the version a member was enrolled on (the registry's moves on when it upgrades).
ALTER TABLE ota.campaign_devices ADD COLUMN from_version text;
