import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from conftest import run_cli


def env_for(database: str) -> dict[str, str]:
    return {**os.environ, "ORCH_DATABASE_URL": database, "ORCH_LOG_FORMAT": "json"}


async def sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def seed(env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    rows = "".join(f"{i},China Mobile,M5310,1.2\n" for i in range(1, 6))
    f.write_text("dev_id,manuf,model,fota_version\n" + rows + "6,China Mobile,M5311,1.0\n")
    assert run_cli("device", "import", str(f), env=env).returncode == 0


def test_create_prints_the_id_last_and_operate(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    seed(env, tmp_path)
    out = run_cli("campaign", "create", "--name", "m5310", "--type", "fota", "--target", "1.3",
                  "--model", "M5310", "--from-version", "1.2", "--waves", "20,100",
                  "--max-per-minute", "600", "--abort-failure-pct", "5",
                  "--abort-min-finished", "3", env=env)
    assert out.returncode == 0, out.stderr
    cid = int(out.stdout.strip().splitlines()[-1])
    assert "5 device(s) enrolled" in out.stdout
    shown = json.loads(run_cli("campaign", "show", str(cid), "--json", "--devices", "10",
                               env=env).stdout)
    assert (shown["status"], shown["total"], shown["waves"]) == ("draft", 5, [20, 100])
    assert shown["max_per_minute"] == 600 and len(shown["devices"]) == 5
    for action, status in [("start", "running"), ("pause", "paused"), ("resume", "running")]:
        out = run_cli("campaign", action, str(cid), env=env)
        assert out.returncode == 0 and f"campaign {cid}: {status}" in out.stdout
    again = run_cli("campaign", "resume", str(cid), env=env)
    assert again.returncode == 1 and "cannot resume" in again.stderr
    listed = json.loads(run_cli("campaign", "list", "--json", env=env).stdout)
    assert [c["campaign_id"] for c in listed] == [cid]
    assert "m5310" in run_cli("campaign", "list", env=env).stdout
    assert run_cli("campaign", "cancel", str(cid), env=env).returncode == 0
    watched = run_cli("campaign", "watch", str(cid), env=env, timeout=20)
    assert watched.returncode == 0
    assert "[cancelled]" in watched.stdout and "cancelled" in watched.stdout
    assert "100.0%" in watched.stdout


def test_devices_file_selector(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    seed(env, tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_text("# pilot\n2\n4\n")
    out = run_cli("campaign", "create", "--name", "pilot", "--type", "fota", "--target", "1.3",
                  "--devices", str(ids), "--start", env=env)
    assert out.returncode == 0, out.stderr
    cid = out.stdout.strip().splitlines()[-1]
    shown = json.loads(run_cli("campaign", "show", cid, "--json", env=env).stdout)
    assert shown["total"] == 2 and shown["status"] == "running"
    ids.write_text("2\n999\n")
    out = run_cli("campaign", "create", "--name", "p", "--type", "fota", "--target", "1.3",
                  "--devices", str(ids), env=env)
    assert out.returncode == 1 and "not in the registry: 999" in out.stderr


def test_bad_flags_are_clear(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    base = ["campaign", "create", "--name", "x", "--type", "fota"]
    out = run_cli(*base, "--target", "1.3", "--waves", "50,10", env=env)
    assert out.returncode == 2 and "waves" in out.stderr
    out = run_cli(*base, "--target", "1 3", env=env)
    assert out.returncode == 2 and "target" in out.stderr
    out = run_cli(*base, "--target", "1.3", "--devices", str(tmp_path / "none"), env=env)
    assert out.returncode == 2 and "cannot read" in out.stderr
    (tmp_path / "bad").write_text("12\nabc\n")
    out = run_cli(*base, "--target", "1.3", "--devices", str(tmp_path / "bad"), env=env)
    assert out.returncode == 2 and "bad:2" in out.stderr
    out = run_cli("campaign", "show", "42", env=env)
    assert out.returncode == 1 and "not found" in out.stderr


def test_errno_table_and_failure_reasons_where_the_operator_looks(database: str) -> None:
    env = {**os.environ, "ORCH_DATABASE_URL": database, "ORCH_LOG_FORMAT": "json"}
    out = run_cli("errno", "--json", env=env)
    assert out.returncode == 0, out.stderr
    table = {r["errno"]: r for r in json.loads(out.stdout)}
    assert table[1]["meaning"].startswith("authentication failed")
    assert "no_task" in table[11]["orchestrator"]

    async def failed_device() -> int:
        conn = await asyncpg.connect(database)
        try:
            await conn.execute("INSERT INTO ota.devices (dev_id, manuf, model, fota_version)"
                               " VALUES (1, 'China Mobile', 'M5310', '1.2')")
            cid = await conn.fetchval("INSERT INTO ota.campaigns (name, type, target_version)"
                                      " VALUES ('x', 'fota', '1.3') RETURNING campaign_id")
            await conn.execute(
                "INSERT INTO ota.campaign_devices (campaign_id, dev_id, state, last_errno,"
                " last_error) VALUES ($1, 1, 'failed', 1, 'device does not exist')", cid)
            return int(cid)
        finally:
            await conn.close()

    cid = asyncio.run(failed_device())
    out = run_cli("campaign", "show", str(cid), "--devices", "10", "--json", env=env)
    assert out.returncode == 0, out.stderr
    reason = json.loads(out.stdout)["devices"][0]["reason"]
    assert reason == ("device does not exist; errno 1: authentication failed (or the device "
                      "does not exist)")


def test_selector_guardrails(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    seed(env, tmp_path)
    base = ["campaign", "create", "--name", "g", "--type", "fota", "--target", "1.3"]
    out = run_cli(*base, env=env)
    assert out.returncode == 2 and "--all-devices" in out.stderr
    out = run_cli(*base, "--model", "M9999", env=env)
    assert out.returncode == 2 and "model: 'M9999' is not in OneNET's module table" in out.stderr
    out = run_cli(*base, "--manuf", "Acme", env=env)
    assert out.returncode == 2 and "manuf" in out.stderr
    out = run_cli(*base, "--model", "BC28", env=env)     # in the tables, not in the fleet
    assert out.returncode == 1 and "matches no device" in out.stderr
    listed = json.loads(run_cli("campaign", "list", "--json", env=env).stdout)
    assert listed == []                                   # nothing half-created
    out = run_cli(*base, "--all-devices", env=env)
    assert out.returncode == 0, out.stderr


def test_update_a_live_campaign(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    seed(env, tmp_path)
    out = run_cli("campaign", "create", "--name", "u", "--type", "fota", "--target", "1.3",
                  "--model", "M5310", "--max-per-minute", "60", "--start", env=env)
    cid = out.stdout.strip().splitlines()[-1]
    out = run_cli("campaign", "update", cid, "--no-rate-limit", "--wave-success-pct", "90",
                  "--dispatch-timeout", "120", env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(run_cli("campaign", "show", cid, "--json", env=env).stdout)
    assert (shown["max_per_minute"], shown["wave_success_pct"]) == (None, 90.0)
    assert shown["dispatch_timeout"] == 120.0
    bad = run_cli("campaign", "update", cid, "--dispatch-timeout", "0", env=env)
    assert bad.returncode == 2 and "dispatch_timeout" in bad.stderr
    out = run_cli("campaign", "update", cid, env=env)
    assert out.returncode == 2 and "at least one change" in out.stderr


def test_smaller_operator_items(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    seed(env, tmp_path)
    out = run_cli("campaign", "create", "--name", "s", "--type", "fota", "--target", "1.3",
                  "--model", "M5310", env=env)
    cid = out.stdout.strip().splitlines()[-1]
    bogus = run_cli("campaign", "show", cid, "--state", "bogus", env=env)
    assert bogus.returncode == 2 and "invalid choice" in bogus.stderr
    shown = run_cli("campaign", "show", cid, "--state", "pending", env=env)
    assert shown.returncode == 0 and "dev_id" in shown.stdout     # --state lists devices
    assert '{"model": "M5310"}' in shown.stdout                    # the selector as JSON
    assert run_cli("campaign", "list", "--status", "nope", env=env).returncode == 2
    assert "cancelled" in run_cli("campaign", "list", env=env).stdout.splitlines()[0]
    run_cli("campaign", "cancel", cid, env=env)
    after = json.loads(run_cli("campaign", "show", cid, "--json", env=env).stdout)
    assert after["status_reason"] == "cancelled by cli"
    piped = subprocess.run(f"{sys.executable} -m orchestrator device show 1 | head -1",
                           shell=True, env=env, capture_output=True, text=True, timeout=60)
    assert "Broken pipe" not in piped.stderr and piped.stdout.startswith("dev_id")
    down = run_cli("device", "list", env={**env, "ORCH_DATABASE_URL":
                                          "postgresql://postgres@127.0.0.1:1/x"})
    assert down.returncode == 1 and "ORCH_DATABASE_URL" in down.stderr


def test_a_device_is_in_one_running_campaign_per_type(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    seed(env, tmp_path)
    base = ["campaign", "create", "--type", "fota", "--target", "1.3", "--model", "M5310"]
    first = run_cli(*base, "--name", "a", "--start", env=env)
    assert first.returncode == 0 and "5 device(s) enrolled" in first.stdout
    second = run_cli(*base, "--name", "b", env=env)
    assert second.returncode == 1 and "5 left out" in second.stderr
    sota = run_cli("campaign", "create", "--type", "sota", "--target", "s2", "--model",
                   "M5310", "--name", "c", env=env)
    assert sota.returncode == 0 and "5 device(s) enrolled" in sota.stdout   # another type


def test_dry_run_plans_and_writes_nothing(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    seed(env, tmp_path)     # 5 x M5310 on 1.2, 1 x M5311 on 1.0
    # and one a device registered itself with a module OneNET's tables do not have
    asyncio.run(sql(database, "INSERT INTO ota.devices (dev_id, manuf, model, fota_version)"
                              " VALUES (7, 'China Mobile', 'M5310A', '1.2')"))
    out = run_cli("campaign", "create", "--name", "d", "--type", "fota", "--target", "1.3",
                  "--manuf", "China Mobile", "--waves", "20,100", "--dry-run", "--json",
                  env=env)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["selected"] == 6
    assert [w["devices"] for w in plan["waves"]] == [2, 4]
    assert {(g["model"], g["from_version"], g["devices"]) for g in plan["groups"]} == {
        ("M5310", "1.2", 5), ("M5311", "1.0", 1)}
    assert plan["left_out"] == {"on_target": 0, "in_another_campaign": 0, "unknown_module": 1}
    text = run_cli("campaign", "create", "--name", "d", "--type", "fota", "--target", "1.2",
                   "--model", "M5310", "--dry-run", env=env)
    assert text.returncode == 0 and "5 on the target already" in text.stdout
    assert json.loads(run_cli("campaign", "list", "--json", env=env).stdout) == []
    # the plans spent no campaign id; creating leaves the unknown module out, and says so
    out = run_cli("campaign", "create", "--name", "d", "--type", "fota", "--target", "1.3",
                  "--manuf", "China Mobile", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "1"
    assert "6 device(s) enrolled" in out.stdout
    assert "1 device(s) left out: their module is not in OneNET's tables" in out.stdout


def test_a_mistyped_flag_gets_a_suggestion(database: str) -> None:
    out = run_cli("campaign", "create", "--name", "x", "--type", "fota", "--target", "1.3",
                  "--max-per-mnute", "5", env=env_for(database))
    assert out.returncode == 2
    assert "did you mean --max-per-minute?" in out.stderr
    assert out.stderr.startswith("usage: orchestrator campaign create")
