"""``campaign rehearse`` on the real database: the selection the enrolment would take,
group models read from a past campaign's members, variants side by side, nothing written;
bad flags answered as usage errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import asyncpg

from conftest import run_cli


def env_for(database: str) -> dict[str, str]:
    return {**os.environ, "ORCH_DATABASE_URL": database, "ORCH_LOG_FORMAT": "json"}


async def test_a_rehearsal_reads_history_and_writes_nothing(database: str,
                                                           tmp_path: Path) -> None:
    env = env_for(database)
    f = tmp_path / "d.csv"
    f.write_text("dev_id,manuf,model,fota_version\n" + "".join(
        f"{i},China Mobile,{'M5311' if i > 80 else 'M5310'},1.2\n" for i in range(1, 121)))
    assert run_cli("device", "import", str(f), env=env).returncode == 0
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("UPDATE ota.devices SET signal = 20, power = 80, status_at = now(),"
                           " last_seen = now()")
        # a past campaign over devices 1..120: every M5311 refused with errno 9
        out = run_cli("campaign", "create", "--name", "past", "--type", "fota", "--target",
                      "1.1", "--all-devices", "--start", env=env)
        assert out.returncode == 0, out.stderr
        past = int(out.stdout.split()[-1])
        await conn.execute(
            "UPDATE ota.campaign_devices cd SET state = CASE WHEN d.model = 'M5311'"
            " THEN 'failed' ELSE 'succeeded' END, last_errno = CASE WHEN d.model = 'M5311'"
            " THEN 9 ELSE 0 END, task = CASE WHEN d.model = 'M5310' THEN '{\"target\": \"1.1\","
            " \"token\": \"t\", \"size\": 1, \"signal\": 10, \"power\": 20, \"retry\": 2,"
            " \"interval\": 30, \"md5\": \"\", \"type\": 1}'::jsonb END,"
            " dispatched_at = CASE WHEN d.model = 'M5310' THEN now() - interval '1 hour' END,"
            " updated_at = now() - interval '1 hour' + interval '40 seconds'"
            " FROM ota.devices d WHERE d.dev_id = cd.dev_id AND cd.campaign_id = $1", past)
        await conn.execute("UPDATE ota.campaigns SET status = 'completed' WHERE campaign_id = $1",
                           past)
        before = await conn.fetchval("SELECT count(*) FROM ota.campaign_devices")
        out = run_cli("campaign", "rehearse", "--type", "fota", "--target", "1.3",
                      "--all-devices", "--waves", "10,100", "--max-per-minute", "600",
                      "--runs", "3", "--json", "--compare", "--waves 100 --max-per-minute 1200",
                      env=env)
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert r["selected"] == 120 and r["runs"] == 3
        groups = {g["model"]: g for g in r["groups"]}
        assert groups["M5311"]["history"]["answers"] == {"9": 1.0}
        assert groups["M5310"]["history"]["task"]["retry"] == 2
        assert groups["M5310"]["history"]["upgrade_seconds_median"] == 40.0
        as_given, faster = r["variants"]
        for v in (as_given, faster):
            assert v["counts"] == {"succeeded": 80, "failed": 40}, v
            assert v["ended"] == {"complete": 3}
        assert [w["devices"] for w in as_given["waves"]] == [12, 108]
        assert faster["flags"] == "--waves 100 --max-per-minute 1200"
        assert [w["devices"] for w in faster["waves"]] == [120]
        assert faster["time_to_finish"]["median_seconds"] < \
            as_given["time_to_finish"]["median_seconds"]
        assert await conn.fetchval("SELECT count(*) FROM ota.campaign_devices") == before
        assert await conn.fetchval("SELECT count(*) FROM ota.campaigns") == 1
        text = run_cli("campaign", "rehearse", "--type", "fota", "--target", "1.3",
                       "--model", "M5310", "--runs", "1", env=env)
        assert text.returncode == 0, text.stderr
        assert "rehearsal (nothing written): 80 device(s)" in text.stdout
        assert "final: succeeded 80" in text.stdout
    finally:
        await conn.close()
    out = run_cli("campaign", "rehearse", "--type", "fota", "--target", "1.3", "--model",
                  "M5312", env=env)
    assert out.returncode == 1 and "nothing to rehearse" in out.stderr, out.stderr
    for bad, says in [(["--compare", "--waves 50,10"], "--compare"),
                      (["--compare", "--nope 1"], "--compare"),
                      (["--runs", "0"], "runs"),
                      (["--waves", "5"], "waves")]:
        out = run_cli("campaign", "rehearse", "--type", "fota", "--target", "1.3",
                      "--all-devices", *bad, env=env)
        assert out.returncode == 2 and says in out.stderr, (bad, out.stderr)
