import asyncio
import json
import os
from pathlib import Path

import asyncpg

from conftest import run_cli

GOOD = """dev_id,manuf,model,fota_version,sota_version
1001,China Mobile,M5310,1.2,app-1
1002,Quectel Wireless Solutions Co.,BC28,1.0,
"""


def env_for(database: str) -> dict[str, str]:
    return {**os.environ, "ORCH_DATABASE_URL": database, "ORCH_LOG_FORMAT": "json"}


def test_import_list_show(database: str, tmp_path: Path) -> None:
    f = tmp_path / "devices.csv"
    f.write_text("dev_id,manuf,model,fota_version,sota_version\n"
                 "1001,China Mobile,M5310,1.2,app-1\n"
                 '1002,"Quectel Wireless Solutions Co., Ltd.",BC28,1.0,\n')
    env = env_for(database)
    out = run_cli("device", "import", str(f), env=env)
    assert out.returncode == 0, out.stderr
    assert "imported 2 device(s)" in out.stdout
    shown = run_cli("device", "show", "1001", "--json", env=env)
    data = json.loads(shown.stdout)
    assert (data["model"], data["fota_version"], data["sota_version"]) == ("M5310", "1.2", "app-1")
    listed = json.loads(run_cli("device", "list", "--json", env=env).stdout)
    assert [d["dev_id"] for d in listed] == [1001, 1002]
    text = run_cli("device", "list", "--model", "BC28", env=env).stdout
    assert "1002" in text and "1001" not in text
    missing = run_cli("device", "show", "42", env=env)
    assert missing.returncode == 1 and "device 42 not found" in missing.stderr


def test_bad_rows_reported_by_line_and_nothing_imported(database: str, tmp_path: Path) -> None:
    f = tmp_path / "devices.csv"
    f.write_text("dev_id,manuf,model,fota_version\n"
                 "2001,China Mobile,M5310,1.2\n"
                 "abc,China Mobile,M5310,1.2\n"
                 "2003,China Mobile,M5310,1.2 beta\n"
                 "2004,Nokia,3310,1\n"
                 "2001,China Mobile,M5311,1\n"
                 "2006,China Mobile,M5311,1.0\n")
    env = env_for(database)
    out = run_cli("device", "import", str(f), env=env)
    assert out.returncode == 1
    for line in ("devices.csv:3: dev_id 'abc'", "devices.csv:4: fota_version '1.2 beta'",
                 "devices.csv:5: manufacturer 'Nokia'", "devices.csv:6: dev_id 2001 already"):
        assert line in out.stderr, out.stderr
    assert "nothing imported" in out.stderr
    assert json.loads(run_cli("device", "list", "--json", env=env).stdout) == []
    partial = run_cli("device", "import", "--partial", str(f), env=env)
    assert partial.returncode == 0
    assert "imported 2 device(s), skipped 4 bad row(s)" in partial.stdout
    ids = [d["dev_id"] for d in json.loads(run_cli("device", "list", "--json", env=env).stdout)]
    assert ids == [2001, 2006]


def test_bad_header_and_missing_file(database: str, tmp_path: Path) -> None:
    env = env_for(database)
    f = tmp_path / "x.csv"
    f.write_text("id,model\n1,M5310\n")
    out = run_cli("device", "import", str(f), env=env)
    assert out.returncode == 1 and "x.csv:1: header must name dev_id" in out.stderr
    out = run_cli("device", "import", str(tmp_path / "nope.csv"), env=env)
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_cli_config_errors_are_one_line() -> None:
    out = run_cli("device", "list", env={**os.environ, "ORCH_DATABASE_URL": "mysql://x"})
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: ORCH_DATABASE_URL: scheme must be postgresql:// "
                                  "(got 'mysql')")
    out = run_cli("device", "show", "abc")
    assert out.returncode == 2 and "not a positive device id" in out.stderr


def test_import_by_code_stores_names_and_never_overwrites_a_reported_version(
        database: str, tmp_path: Path) -> None:
    env = env_for(database)
    f = tmp_path / "codes.csv"
    f.write_text("dev_id,manuf,model,fota_version\n11,001,00107,1.2\n12,001,00107,1.2\n")
    assert run_cli("device", "import", str(f), env=env).returncode == 0
    listed = json.loads(run_cli("device", "list", "--model", "M5310", "--json",
                                env=env).stdout)
    assert [d["dev_id"] for d in listed] == [11, 12]
    assert listed[0]["manuf"] == "China Mobile"

    async def reported() -> None:
        conn = await asyncpg.connect(database)
        try:   # device 12 reported 1.3 itself
            await conn.execute("UPDATE ota.devices SET fota_version = '1.3', last_seen = now()"
                               " WHERE dev_id = 12")
        finally:
            await conn.close()

    asyncio.run(reported())
    assert run_cli("device", "import", str(f), env=env).returncode == 0
    shown = {d["dev_id"]: d["fota_version"] for d in json.loads(
        run_cli("device", "list", "--json", env=env).stdout)}
    assert shown == {11: "1.2", 12: "1.3"}
