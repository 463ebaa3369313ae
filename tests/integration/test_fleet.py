"""The simulated fleet against a real broker and the OneNET simulator's downloads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from conftest import MQTT_URL, SIM_KEY, Mosquitto, free_port
from orchestrator.config import Settings, parse_mqtt_url
from orchestrator.domain.onenet import CheckRequest
from orchestrator.mqtt import topics
from orchestrator.onenet.client import OneNetClient
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice, make_devices
from stack import until

M = {"manuf": "China Mobile", "model": "M5310"}


class Listener:
    """Records what devices publish."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    async def run(self, settings: Settings, ready: asyncio.Event) -> None:
        u = settings.mqtt_url
        async with aiomqtt.Client(u.host, u.port) as c:
            await c.subscribe(f"{settings.mqtt_topic_prefix}/#", qos=1)
            ready.set()
            async for m in c.messages:
                self.messages.append((m.topic.value, json.loads(m.payload)))  # type: ignore[arg-type]

    def steps(self, dev: int) -> list[int]:
        return [p["step"] for t, p in self.messages if t.endswith(f"/{dev}/progress")]


async def command(settings: Settings, dev: int, payload: dict[str, Any]) -> None:
    u = settings.mqtt_url
    async with aiomqtt.Client(u.host, u.port) as c:
        await c.publish(topics.command(settings.mqtt_topic_prefix, dev), json.dumps(payload),
                        qos=1)


async def task_for(sim: Any, dev: int) -> dict[str, Any]:

    s = Settings(onenet_url=sim.url, onenet_product_id="123123", onenet_access_key=SIM_KEY)
    async with OneNetClient(s) as client:
        out = await client.check(CheckRequest(dev, "China Mobile", "M5310", 1, "1.2"))
    task = out.task  # type: ignore[union-attr]
    return {"op": "upgrade", "campaign": 9, "type": "fota", "target": task.target,
            "url": f"http://{task.ip_port}/ota/download/{task.token}", "size": task.size,
            "md5": task.md5, "package": "full", "retry": 1, "interval": 1,
            "expires_at": 0}


async def test_fleet_downloads_verifies_and_reports(settings: Settings, start_sim: Any) -> None:
    sim = await start_sim({"devices": [{"dev_id": i, **M, "fota_version": "1.2"}
                                       for i in (1, 2, 3)],
                           "packages": [{"id": "p", "version": "1.3", "size": 200_000}],
                           "tasks": [{"type": "fota", "package": "p"}]})
    listener = Listener()
    ready = asyncio.Event()
    lt = asyncio.create_task(listener.run(settings, ready))
    await ready.wait()
    devices = [SimDevice(1, **M), SimDevice(2, **M, install_failures=[205]), SimDevice(3, **M)]
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices,
                  FleetConfig(status_interval=0.3, bandwidth=400_000, install_time=0.05,
                              progress_every=25, seed=1))
    stop = asyncio.Event()
    ft = asyncio.create_task(fleet.run(stop))
    try:
        await asyncio.wait_for(fleet.connected.wait(), 10)
        good = await task_for(sim, 1)
        started = asyncio.get_running_loop().time()
        await command(settings, 1, good)
        await command(settings, 2, await task_for(sim, 2))
        bad = await task_for(sim, 3)
        await command(settings, 3, {**bad, "md5": "0" * 32})

        async def finished() -> bool:
            return all(listener.steps(d) and listener.steps(d)[-1] in (201, 205)
                       for d in (1, 2, 3))

        await until(finished, 20, "upgrades finished")
        # 200 kB at 400 kB/s: about half a second, not instant
        assert asyncio.get_running_loop().time() - started >= 0.45
        steps = listener.steps(1)
        assert steps[0] == 0 and 101 in steps and steps[-1] == 201
        assert any(0 < s < 100 for s in steps)
        assert devices[0].fota_version == "1.3"
        final = [p for t, p in listener.messages if t.endswith("/1/progress")][-1]
        assert final["version"] == "1.3" and final["campaign"] == 9
        assert listener.steps(2)[-1] == 205 and devices[1].fota_version == "1.2"
        assert listener.steps(3)[-1] == 205 and fleet.stats["md5_mismatch"] == 1
        # a report request is answered at once; status reports keep coming and drift
        before = sum(1 for t, _ in listener.messages if t.endswith("/3/status"))
        await command(settings, 3, {"op": "report"})
        await asyncio.sleep(1.0)
        after = sum(1 for t, _ in listener.messages if t.endswith("/3/status"))
        assert after >= before + 2
        # garbage commands are ignored, the fleet keeps running
        u = settings.mqtt_url
        async with aiomqtt.Client(u.host, u.port) as c:
            await c.publish(topics.command(settings.mqtt_topic_prefix, 1), b"\xff{", qos=1)
            await c.publish(topics.command(settings.mqtt_topic_prefix, 999), b"{}", qos=1)
        await command(settings, 1, {"op": "report"})
        await asyncio.sleep(0.3)
        assert not ft.done()
    finally:
        stop.set()
        await ft
        lt.cancel()


async def test_cancel_stops_a_download(settings: Settings, start_sim: Any) -> None:
    sim = await start_sim({"devices": [{"dev_id": 1, **M, "fota_version": "1.2"}],
                           "packages": [{"id": "p", "version": "1.3", "size": 500_000}],
                           "tasks": [{"type": "fota", "package": "p"}]})
    devices = [SimDevice(1, **M)]
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices,
                  FleetConfig(status_interval=3600, bandwidth=100_000))
    stop = asyncio.Event()
    ft = asyncio.create_task(fleet.run(stop))
    try:
        await asyncio.wait_for(fleet.connected.wait(), 10)
        await command(settings, 1, await task_for(sim, 1))
        await until(lambda: asyncio.sleep(0, devices[0].busy), 5, "download started")
        await command(settings, 1, {"op": "cancel", "campaign": 9})
        await until(lambda: asyncio.sleep(0, not devices[0].busy), 5, "download stopped")
        assert devices[0].fota_version == "1.2" and fleet.stats["upgraded"] == 0
    finally:
        stop.set()
        await ft


def test_seeded_fleets_are_reproducible() -> None:
    a = make_devices(50, seed=3)
    b = make_devices(50, seed=3)
    assert [(d.signal, d.power) for d in a] == [(d.signal, d.power) for d in b]
    assert [d.dev_id for d in a] == list(range(1, 51))
    assert [(d.signal, d.power) for d in make_devices(50, seed=4)] != \
        [(d.signal, d.power) for d in a]


async def test_offline_devices_stay_quiet(settings: Settings) -> None:
    devices = make_devices(20, seed=1)
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices,
                  FleetConfig(status_interval=0.1, offline_rate=1.0, offline_seconds=60,
                              seed=1))
    stop = asyncio.Event()
    ft = asyncio.create_task(fleet.run(stop))
    await asyncio.wait_for(fleet.connected.wait(), 10)
    await asyncio.sleep(0.5)
    sent = fleet.stats["status"]
    await asyncio.sleep(0.5)
    assert fleet.stats["offline"] == 20 and fleet.stats["status"] == sent
    stop.set()
    await ft


async def test_a_publish_that_times_out_on_a_live_connection_is_sent_again(
        private_broker: Mosquitto) -> None:
    """A broker too busy to acknowledge in time (frozen here with SIGSTOP) leaves the
    connection up: the device's message is sent again on it, not held for a reconnection
    that never comes (a million-device run lost 37 devices' last step that way)."""
    assert private_broker.proc is not None
    url = parse_mqtt_url(private_broker.url)
    dev = SimDevice(dev_id=7, drift=False)
    fleet = Fleet(url, "t", [dev], FleetConfig(status_interval=3600, publish_timeout=0.5))
    stop = asyncio.Event()
    seen: list[dict[str, Any]] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(url.host, url.port) as c:
            await c.subscribe("t/#", qos=1)
            ready.set()
            async for m in c.messages:
                seen.append(json.loads(m.payload))  # type: ignore[arg-type]

    lt = asyncio.create_task(listen())
    ft = asyncio.create_task(fleet.run(stop))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.wait_for(fleet.connected.wait(), 10)

        async def reported() -> bool:
            return len(seen) >= 1

        async def finished() -> bool:
            return any(p.get("step") == 201 for p in seen)

        await until(reported, 10, "the first report")
        private_broker.proc.send_signal(signal.SIGSTOP)
        try:
            sent = asyncio.create_task(fleet.progress(dev, 1, 201, "1.3"))
            await asyncio.sleep(1.6)                      # three timeouts, connection up
            assert not sent.done()
            assert fleet.stats["publish_retries"] >= 2
        finally:
            private_broker.proc.send_signal(signal.SIGCONT)
        await asyncio.wait_for(sent, 5)
        await until(finished, 5, "step 201")
        assert fleet.stats["reconnects"] == 0 and fleet.stats["step_201"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(ft, 10)
        lt.cancel()
        await asyncio.gather(lt, return_exceptions=True)


@pytest.mark.parametrize("accounts", [False, True], ids=["one-connection", "per-device"])
def test_simulate_fleet_says_it_cannot_reach_the_broker_and_stops_on_sigterm(
        accounts: bool, tmp_path: Path) -> None:
    """Also with an account and a connection per device: such a fleet once waited for its
    devices' first connections even after SIGTERM, for ever."""
    env = {**os.environ, "ORCH_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
           "ORCH_LOG_LEVEL": "error"}
    args = ["--devices", "3"]
    if accounts:
        creds = tmp_path / "creds.csv"
        creds.write_text("dev_id,username,password\n1,1,s1\n2,2,s2\n3,3,s3\n")
        args = ["--credentials", str(creds)]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "simulate", "fleet", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(7)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, (out, err)
    assert "cannot reach the broker" in err and "ORCH_MQTT_URL" in err


async def test_simulate_fleet_takes_its_devices_from_the_scenario() -> None:
    prefix = f"sc{os.getpid()}"
    scenario = Path(__file__).parents[2] / "deploy" / "onenet-scenario.toml"
    url = parse_mqtt_url(MQTT_URL)
    seen: dict[int, dict[str, Any]] = {}
    async with aiomqtt.Client(url.host, url.port) as sub:
        await sub.subscribe(f"{prefix}/+/status", qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "simulate", "fleet", "--devices", "4",
            "--scenario", str(scenario),
            env={**os.environ, "ORCH_MQTT_URL": MQTT_URL, "ORCH_MQTT_TOPIC_PREFIX": prefix,
                 "ORCH_LOG_LEVEL": "error"},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(20):
                async for m in sub.messages:
                    dev_id = int(m.topic.value.split("/")[1])
                    seen[dev_id] = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                    if len(seen) == 4:
                        break
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert (seen[3]["model"], seen[3]["fota_version"]) == ("BC28", "2.0")
    assert (seen[4]["model"], seen[4]["fota_version"]) == ("M5311", "1.0")
