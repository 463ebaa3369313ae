"""``bench campaign``: a whole campaign with a simulated fleet, creation to last success."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.domain.onenet import authorization
from orchestrator.sim import DEMO_ACCESS_KEY
from orchestrator.store import devices
from orchestrator.store.campaigns import get_campaign
from orchestrator.store.db import connect
from orchestrator.tools.bench.common import (
    PRODUCT_ID,
    Say,
    checks_scenario,
    fleet_process,
    private_broker,
    raw_checks_all,
    report,
    scratch_database,
    server_cpu_seconds,
    simulator_process,
)
from orchestrator.tools.demo import free_port
from orchestrator.usecases.campaigns import create as create_campaign

REPLICAS = 2          # `orchestrator run` processes, each measured (the bench only watches)
FLEET_SHARD = 250_000     # simulated devices per fleet process
# the fleet reports an hour apart: a status stays fresh for the whole campaign (a million
# devices take most of an hour here), so no device needs a report request on the way
STATUS_MAX_AGE = 4 * 3600.0


async def bench_campaign(settings: Settings, say: Say, n: int = 2_000) -> dict[str, Any]:
    async with private_broker(settings, say) as s:
        return await _bench_campaign(s, say, n)


def _peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM), MB; 0 where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _replica_env(s: Settings, dsn: str) -> dict[str, str]:
    u = s.mqtt_url
    env = {**os.environ, "ORCH_DATABASE_URL": dsn, "ORCH_MQTT_URL": f"mqtt://{u.host}:{u.port}",
           "ORCH_MQTT_TOPIC_PREFIX": s.mqtt_topic_prefix, "ORCH_MQTT_PROTOCOL": s.mqtt_protocol,
           "ORCH_ONENET_URL": s.onenet_url, "ORCH_ONENET_PRODUCT_ID": PRODUCT_ID,
           "ORCH_ONENET_ACCESS_KEY": DEMO_ACCESS_KEY, "ORCH_API_LISTEN": "127.0.0.1:0",
           "ORCH_SCHEDULER_POLL_INTERVAL": str(s.scheduler_poll_interval),
           "ORCH_STATUS_MAX_AGE": str(s.status_max_age),
           "ORCH_LOG_LEVEL": "error", "ORCH_LOG_FORMAT": "json"}
    env.pop("ORCH_MQTT_CLIENT_ID", None)        # a slot of its own on this host
    env.pop("ORCH_ONENET_AUTHORIZATION", None)
    return env


async def _until_ready(replicas: list[subprocess.Popen[bytes]], ports: list[int],
                       timeout: float = 60.0) -> None:
    """Until every replica's ``/readyz`` answers 200 (its ingest subscribed)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for proc, port in zip(replicas, ports, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"a replica exited with code {proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a replica was not ready in {timeout:g} s")
                await asyncio.sleep(0.1)


async def _bench_campaign(settings: Settings, say: Say, n: int) -> dict[str, Any]:
    say(f"campaign: {n:,} simulated devices from creation to the last success, "
        f"{REPLICAS} replicas")
    scenario = checks_scenario()
    async with simulator_process(scenario) as (url, _):
        auth = {"Authorization": authorization(PRODUCT_ID, DEMO_ACCESS_KEY,
                                               int(time.time()) + 3600)}
        raws = await raw_checks_all(url, n, settings.onenet_concurrency, lambda i: {
            "dev_id": 20_000_000 + i, "manuf": "China Mobile", "model": "M5310", "type": 1,
            "version": "1.2", "cdn": True}, auth, say)
        raw = max(r.rate for r in raws)      # one check per device: the fastest client's
        async with scratch_database(settings) as dsn:
            prefix = f"cmpbench{os.getpid()}"
            s = dataclasses.replace(settings, database_url=dsn, onenet_url=url,
                                    onenet_product_id=PRODUCT_ID, onenet_access_key=DEMO_ACCESS_KEY,
                                    onenet_authorization=None, mqtt_topic_prefix=prefix,
                                    mqtt_client_id=f"bench-{prefix}", api_listen="127.0.0.1:0",
                                    scheduler_poll_interval=0.05,
                                    status_max_age=STATUS_MAX_AGE)
            ports = [free_port() for _ in range(REPLICAS)]
            replicas = [subprocess.Popen([sys.executable, "-m", "orchestrator", "run"],
                                         env={**_replica_env(s, dsn),
                                              "ORCH_API_LISTEN": f"127.0.0.1:{port}"},
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for port in ports]
            fleets: list[subprocess.Popen[bytes]] = []
            try:
                # the fleet reports once an hour: its first reports must find ingest
                # subscribed, or they are lost (the broker keeps nothing for a topic no one
                # subscribes to)
                await _until_ready(replicas, ports)
                fleets = [fleet_process(s, min(FLEET_SHARD, n - first + 1), first,
                                        "--seed", str(first))
                          for first in range(1, n + 1, FLEET_SHARD)]
                conn = await connect(dsn)
                try:
                    say(f"  waiting for {n:,} simulated devices to report")
                    async with asyncio.timeout(max(120.0, n / 200)):
                        while await devices.count_reported(conn, 1, n) < n:
                            await asyncio.sleep(0.5)
                    disk_before = await conn.fetchval("SELECT pg_database_size(current_database())")
                    db_cpu = await server_cpu_seconds(conn)
                    started = time.perf_counter()
                    cid = await create_campaign(conn, CampaignSpec("bench", "fota", "1.3",
                                                       all_devices=True),
                                                start=True)
                    progress_ms: list[float] = []
                    shown = started
                    async with asyncio.timeout(max(600.0, n / 20)):
                        while True:
                            t = time.perf_counter()
                            campaign = await get_campaign(conn, cid)   # ota.campaign_progress
                            progress_ms.append(1000 * (time.perf_counter() - t))
                            assert campaign is not None
                            if campaign.status == "completed":
                                break
                            if time.perf_counter() - shown >= 10:
                                shown = time.perf_counter()
                                say(f"  {shown - started:5.0f} s: "
                                    f"{campaign.counts.succeeded:,} succeeded")
                            await asyncio.sleep(0.05)
                    elapsed = time.perf_counter() - started
                    db_after = await server_cpu_seconds(conn)
                    db_cpu_s = (None if db_cpu is None or db_after is None
                                else round(db_after - db_cpu, 1))
                    events = await conn.fetchval(
                        "SELECT count(*) FROM ota.events WHERE campaign_id = $1", cid)
                    disk_mb = (await conn.fetchval(
                        "SELECT pg_database_size(current_database())") - disk_before) / 2**20
                    replica_rss = [_peak_rss_mb(p.pid) for p in replicas]
                finally:
                    await conn.close()
            finally:
                for proc in [*replicas, *fleets]:
                    proc.send_signal(signal.SIGTERM)
                for proc in [*replicas, *fleets]:
                    await asyncio.to_thread(proc.wait)
    rate = n / elapsed
    succeeded = campaign.counts.succeeded
    say(f"  campaign: {succeeded} succeeded in {elapsed:.1f} s")
    progress_ms.sort()
    return report("campaign", "devices/s", rate, raw,
                  {"devices": n, "succeeded": succeeded, "seconds": round(elapsed, 2),
                   "events_per_device": round(events / n, 2),
                   "campaign_progress_ms_p50": round(progress_ms[len(progress_ms) // 2], 2),
                   "campaign_progress_ms_p99": round(
                       progress_ms[min(len(progress_ms) - 1, int(len(progress_ms) * 0.99))], 2),
                   "campaign_progress_ms_max": round(progress_ms[-1], 2),
                   "replicas": REPLICAS,
                   "replica_max_rss_mb": [round(r, 1) for r in replica_rss],
                   "database_cpu_seconds": db_cpu_s,
                   "database_growth_mb": round(disk_mb, 1)},
                  say)


