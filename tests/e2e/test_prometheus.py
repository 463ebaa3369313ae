"""The alert rules, proven: promtool's unit tests on deploy/prometheus, and a real Prometheus
scraping a real `orchestrator run` that fires OneNETBreakerOpen when the OneNET simulator
is taken down."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import free_port
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.store.db import connect
from orchestrator.usecases.campaigns import create as create_campaign
from stack import env_for, start_run, until

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/test installs Debian's prometheus)")
    return path


def test_the_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    # the compose config names the rules where the container mounts them
    config = (RULES / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules.yml" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/rules.yml", str(RULES / "rules.yml")))
    for args, where in ((["check", "rules", "rules.yml"], RULES),
                        (["test", "rules", "rules_test.yml"], RULES),
                        (["check", "config", "prometheus.yml"], tmp_path)):
        out = subprocess.run([tool("promtool"), *args], cwd=where, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, \
            out.stdout + out.stderr


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


async def test_a_real_prometheus_fires_when_onenet_goes_away(
        settings: Settings, start_sim: Any, tmp_path: Path) -> None:
    sim = await start_sim({"server": {"auto_register": True},
                           "packages": [{"id": "p", "version": "1.3", "size": 1000}],
                           "tasks": [{"type": "fota", "package": "p", "retry": 1,
                                      "interval": 1}]})
    dsn = settings.database_url or ""
    conn = await connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power,"
            " status_at, last_seen) SELECT g, 'China Mobile', 'M5310', '1.2', 20, 80, now(),"
            " now() FROM generate_series(1, 300) g")
    finally:
        await conn.close()
    api = free_port()
    proc = await start_run(env_for(settings, sim.url, ORCH_API_LISTEN=f"127.0.0.1:{api}"),
                           settings.mqtt_client_id)
    # the shipped rules, with each "for" shortened so the test takes seconds, not minutes
    rules = re.sub(r"for: \d+m", "for: 3s", (RULES / "rules.yml").read_text())
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{tmp_path / 'rules.yml'}]\n"
        "scrape_configs:\n  - job_name: orchestrator\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{api}']}}]\n")
    port = free_port()
    prom = subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/api/v1"

    async def firing(name: str) -> bool:
        alerts = (await asyncio.to_thread(get, f"{base}/alerts"))["data"]["alerts"]
        return any(a["labels"]["alertname"] == name and a["state"] == "firing"
                   for a in alerts)

    async def scraped() -> bool:
        try:
            r = await asyncio.to_thread(get, f"{base}/query?query=orch_controller_leader")
        except OSError:
            return False
        return [x["value"][1] for x in r["data"]["result"]] == ["1"]

    try:
        await until(scraped, 60, "Prometheus scraping the replica, which leads")
        await asyncio.sleep(5)          # a few evaluations with everything healthy
        assert not await firing("OneNETBreakerOpen")
        assert not await firing("NoController") and not await firing("OrchestratorDown")
        await sim.runner.cleanup()      # OneNET goes away
        conn = await connect(dsn)
        try:
            await create_campaign(conn, CampaignSpec("p", "fota", "1.3", all_devices=True),
                                  start=True)
        finally:
            await conn.close()
        await until(lambda: firing("OneNETBreakerOpen"), 90, "OneNETBreakerOpen firing")
        series = await asyncio.to_thread(
            get, f"{base}/query?query=orch_campaign_devices%7Bstate%3D%22pending%22%7D")
        assert series["data"]["result"], "per-campaign gauges are scraped"
    finally:
        prom.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(prom.wait, 30)
        await asyncio.to_thread(proc.wait, 30)


def test_compose_mounts_the_rules_the_board_and_its_provider() -> None:
    deploy = RULES.parent
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    mounts = {m.split(":")[0]: m.split(":")[1]
              for svc in ("prometheus", "grafana") for m in compose["services"][svc]["volumes"]
              if m.startswith("./")}
    for local in mounts:
        assert (deploy / local).exists(), local
    assert mounts["./prometheus/rules.yml"] == "/etc/prometheus/rules.yml"
    assert mounts["./grafana/dashboards"] == "/var/lib/grafana/dashboards"
    provider = yaml.safe_load((deploy / "grafana" / "dashboards.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((deploy / "grafana" / "datasource.yaml").read_text())
    board = json.loads((deploy / "grafana" / "dashboards" / "orchestrator.json").read_text())
    uids = {p["datasource"]["uid"] for p in board["panels"]}
    assert uids == {source["datasources"][0]["uid"]}
