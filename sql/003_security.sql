-- 003: progress bound to a dispatch. Each upgrade command carries a random attempt id; a
-- device's progress must echo it to be applied.
ALTER TABLE ota.campaign_devices ADD COLUMN attempt text;
