-- 005: a device is upgraded by at most one running or paused campaign of a type at a time.
-- Enrolment leaves out the devices this view lists (and says how many).
CREATE VIEW ota.busy_devices AS
SELECT cd.dev_id, c.type, cd.campaign_id
FROM ota.campaign_devices cd
JOIN ota.campaigns c ON c.campaign_id = cd.campaign_id
WHERE c.status IN ('running', 'paused')
  AND cd.state NOT IN ('succeeded', 'failed', 'no_task', 'cancelled');
