"""The demo on embedded services (a short run, and a clean Ctrl-C), and each benchmark run
tiny: benchmarks are not timed tests, these only prove they run and report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ADMIN_URL, MQTT_URL


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["ORCH_LOG_FORMAT"] = "json"
    return env


def demo_postgres_running() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if "postgres" in line and "orchestrator-demo-" in line]


@pytest.mark.timeout(300)
def test_demo_runs_on_embedded_services_and_exits_zero() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator", "demo", "--devices", "40"],
                         env=clean_env(), capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "embedded PostgreSQL" in out.stdout and "amqtt" in out.stdout
    summary = out.stdout[out.stdout.index("summary of campaign"):]
    assert "(completed)" in summary
    succeeded = int(summary.split("succeeded")[1].split()[0])
    no_task = int(summary.split("no task")[1].split()[0])
    assert succeeded == 38 and no_task == 2
    assert "gate retries" in summary and "duration" in summary
    assert not demo_postgres_running()


@pytest.mark.timeout(120)
def test_demo_ctrl_c_stops_everything() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "demo", "--devices", "200"],
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("campaign "):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert not demo_postgres_running()


def bench(which: str, size: int) -> dict[str, object]:
    env = {**clean_env(), "ORCH_DATABASE_URL": ADMIN_URL, "ORCH_MQTT_URL": MQTT_URL}
    out = subprocess.run([sys.executable, "-m", "orchestrator", "bench", which, "--size",
                          str(size)], env=env, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == which
    for key in ("unit", "rate", "raw_rate", "ratio"):
        assert key in result
    assert result["rate"] > 0 and result["raw_rate"] > 0
    assert abs(result["ratio"] - result["rate"] / result["raw_rate"]) < 0.01
    return result


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("which", "size"), [("ingest", 3000), ("checks", 300),
                                             ("enroll", 2000), ("campaign", 60),
                                             ("scale", 20000)])
def test_bench_smoke(which: str, size: int) -> None:
    result = bench(which, size)
    if which == "enroll":
        assert result["devices"] == 2000
        assert result["campaign_progress_ms_max"] < 1000
    if which == "ingest":
        # every report applied in both loads, and our cost per message counted (the
        # database's is clock ticks: a small run may see none)
        assert result["applied"] == result["burst_applied"] == 3000
        for key in ("", "burst_"):
            assert 0 < result[f"{key}cpu_us_per_message"] < 1000
            assert result[f"{key}database_cpu_us_per_message"] >= 0
    if which == "campaign":
        # two replicas share the campaign: both ran and were measured, every device succeeded
        assert result["succeeded"] == result["devices"] == 60
        rss = result["replica_max_rss_mb"]
        assert result["replicas"] == len(rss) == 2 and all(r > 0 for r in rss)
        # the whole local server's CPU is read (clock ticks: a small run may see none)
        assert result["database_cpu_seconds"] is not None
        assert result["database_cpu_seconds"] >= 0
    if which == "scale":
        # every step measured at the size asked, every dashboard query timed, and none of
        # them reads a fleet-sized table from end to end
        assert result["devices"] == 20000 and result["ingest_reports"] > 0
        assert result["plan_seconds"] > 0 and result["enrol_seconds"] > 0
        assert len(result["query_ms"]) >= 15
        assert result["queries_with_seq_scan_of_fleet_table"] == []
        assert 0.5 < result["ingest_hot_update_ratio"] <= 1     # room on the page is used
        assert result["scheduler_processed"] > 0
    if which == "checks":
        # every client of the test extra measured, the fastest is the raw limit, and the
        # other processes on the path were found and counted
        rates = {c: result[f"{c}_rate"] for c in ("aiohttp", "pyreqwest")}
        assert result["raw_rate"] == max(rates.values())
        assert rates[result["raw_client"]] == result["raw_rate"]
        assert result["simulator_cpu_ms_per_1000"] > 0
        assert result["simulator_server"] == "granian"     # the test extra has it
        assert result["database_cpu_ms_per_1000"] >= 0
        assert 0 < result["machine_ceiling"] <= result["machine_ceiling_bare"]


def test_bench_needs_a_database() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator", "bench", "enroll"],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "ORCH_DATABASE_URL" in out.stderr


def test_demo_refuses_a_bad_device_count() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator", "demo", "--devices", "0"],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--devices: 1 to 100000" in out.stderr
