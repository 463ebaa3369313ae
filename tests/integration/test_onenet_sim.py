"""The simulator and the client, each against the other, over real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from conftest import SIM_KEY, free_port, run_cli
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.domain.onenet import (
    CheckRequest,
    Failed,
    NoTask,
    ProtocolError,
    Retryable,
    TaskFound,
    authorization,
)
from orchestrator.domain.resilience import Breaker
from orchestrator.metrics import Metrics
from orchestrator.onenet.client import OneNetClient, TokenSource
from orchestrator.sim import fast
from orchestrator.sim.onenet import Simulator
from orchestrator.sim.scenario import ScenarioError, load_scenario, parse_scenario
from orchestrator.store import devices
from orchestrator.store.database import PgDatabase
from orchestrator.usecases.campaigns import create as create_campaign
from orchestrator.workers.scheduler import Scheduler

M5310 = {"manuf": "China Mobile", "model": "M5310"}
SCENARIO = {
    "devices": [
        {"dev_id": 1, **M5310, "fota_version": "1.2"},
        {"dev_id": 2, **M5310, "fota_version": "1.2"},
        {"dev_id": 3, "manuf": "Quectel Wireless Solutions Co., Ltd.", "model": "BC28",
         "fota_version": "2.0"},
        {"dev_id": 4, **M5310, "fota_version": "1.0"},
        {"dev_id": 5, "manuf": "Quectel Wireless Solutions Co., Ltd.", "model": "BC28"},
        {"dev_id": 6, **M5310, "fota_version": "1.2"},
    ],
    "packages": [
        {"id": "full13", "version": "1.3", "size": 5000},
        {"id": "diff21", "version": "2.1", "type": "diff", "from_version": "2.0", "size": 300},
    ],
    "tasks": [{"type": "fota", "package": "full13", "devices": [1, 2, 6], "signal": 10,
               "power": 20, "retry": 2, "interval": 30}],
    "strategies": [{"type": "fota", "package": "diff21", "model": "BC28"}],
    "script": {"6": [7, 7]},
}


def settings_for(url: str, **kw: Any) -> Settings:
    return Settings(onenet_url=url, onenet_product_id="123123", onenet_access_key=SIM_KEY,
                    onenet_timeout=2.0, **kw)


def req(dev_id: int, version: str = "1.2", **kw: Any) -> CheckRequest:
    fields = {**M5310, **kw}
    return CheckRequest(dev_id, fields.pop("manuf"), fields.pop("model"),
                        fields.pop("type", 1), version, **fields)


async def test_client_against_simulator_every_errno(start_sim: Any) -> None:
    srv = await start_sim(SCENARIO)
    async with OneNetClient(settings_for(srv.url)) as client:
        found = await client.check(req(1, signals=15, powers=60))
        assert isinstance(found, TaskFound)
        t = found.task
        assert (t.target, t.size, t.signal, t.power, t.retry, t.interval, t.type) == (
            "1.3", 5000, 10, 20, 2, 30, 1)
        assert t.ip_port == srv.sim.ip_port and t.token.startswith("ota_")
        # the body carried signals and powers and the version was recorded
        body = srv.sim.check_bodies[-1]
        assert (body["signals"], body["powers"], body["cdn"]) == (15, 60, True)
        assert srv.sim.devices[1].versions[1] == "1.2"
        assert isinstance(await client.check(req(4, "1.0")), NoTask)          # 11
        assert srv.sim.devices[4].versions[1] == "1.0"
        wrong = await client.check(req(2, model="M5311"))                     # 8
        assert isinstance(wrong, Failed) and wrong.errno == 8 and not wrong.local
        bc28 = {"manuf": "Quectel Wireless Solutions Co., Ltd.", "model": "BC28"}
        nine = await client.check(req(3, "1.9", **bc28))                      # 9
        assert isinstance(nine, Failed) and nine.errno == 9
        assert [t.state for t in srv.sim.tasks.values() if t.dev_id == 3] == ["failed"]
        thirty_two = await client.check(req(5, "1.9", **bc28))                # 32
        assert isinstance(thirty_two, Failed) and thirty_two.errno == 32
        for _ in range(2):                                                    # 7, 7
            seven = await client.check(req(6))
            assert isinstance(seven, Retryable) and seven.errno == 7
        assert isinstance(await client.check(req(6)), TaskFound)
        unknown = await client.check(req(99))                                 # 1
        assert isinstance(unknown, Failed) and unknown.errno == 1
        # an automatic-add strategy made a task for a BC28 on 2.0
        auto = await client.check(req(5, "2.0", **bc28))
        assert isinstance(auto, TaskFound) and auto.task.type == 2
    # 2 and 27: only reachable by a client that skips validation
    async with aiohttp.ClientSession() as s:
        auth = authorization("123123", SIM_KEY, 2**40, "sha1")
        for body, errno in [({"dev_id": 1}, 2), ({**M5310, "dev_id": 1, "type": 3,
                                                   "version": "1", "cdn": True}, 2),
                            ({**M5310, "dev_id": 1, "type": 1, "version": "1 2",
                              "cdn": True}, 27)]:
            async with s.post(f"{srv.url}/ota/south/check", json=body,
                              headers={"Authorization": auth}) as r:
                assert (await r.json())["errno"] == errno
    assert {k: srv.sim.checks[k] for k in (0, 1, 2, 7, 8, 9, 11, 27, 32)} == {
        0: 3, 1: 1, 2: 2, 7: 2, 8: 1, 9: 1, 11: 1, 27: 1, 32: 1}


async def test_local_validation_never_sends_a_bad_version(start_sim: Any) -> None:
    srv = await start_sim(SCENARIO)
    async with OneNetClient(settings_for(srv.url)) as client:
        bad = await client.check(req(1, "1.2 beta"))
        assert isinstance(bad, Failed) and bad.errno == 27 and bad.local
        unknown = await client.check(req(1, manuf="Nokia"))
        assert isinstance(unknown, Failed) and unknown.local and "Nokia" in unknown.error
    assert srv.sim.checks == {}


async def test_codes_and_get_form(start_sim: Any) -> None:
    srv = await start_sim({**SCENARIO, "devices": [
        {"dev_id": 1, "manuf": "001", "model": "00107", "fota_version": "1.2"}]})
    s = settings_for(srv.url, onenet_send="code", onenet_check_method="GET")
    async with OneNetClient(s) as client:
        out = await client.check(req(1, signals=3))
        assert isinstance(out, TaskFound)
    body = srv.sim.check_bodies[-1]
    assert body["_method"] == "GET" and (body["manuf"], body["model"]) == ("001", "00107")
    assert body["signals"] == "3"


async def test_bare_simulator_refuses_unauthenticated_and_garbage(start_sim: Any) -> None:
    srv = await start_sim({"credentials": {}})
    async with aiohttp.ClientSession() as s:
        forged = authorization("100000", SIM_KEY, 2**40, "sha256")
        for headers in ({}, {"Authorization": forged}):
            async with s.post(f"{srv.url}/ota/south/check", json={"dev_id": 1},
                              headers=headers) as r:
                assert (await r.json())["errno"] == 1
        async with s.post(f"{srv.url}/ota/south/check", data=b"{not json",
                          headers={"Authorization": forged}) as r:
            assert (await r.json())["errno"] in (1, 2)
        async with s.get(f"{srv.url}/ota/south/check",
                         params={"dev_id": "1", "manuf": "x", "model": "y", "type": "1",
                                 "version": "1", "cdn": "true"}) as r:
            assert (await r.json())["errno"] == 1
        async with s.get(f"{srv.url}/ota/south/download/unknown") as r:
            assert r.headers.get("Content-Length") is None
            assert await r.read() == b"3"


async def test_simulator_auth_accepts_the_right_key(start_sim: Any) -> None:
    srv = await start_sim({"credentials": {"product_id": "77", "access_key": SIM_KEY},
                           "devices": [{"dev_id": 1, **M5310}]})
    async with aiohttp.ClientSession() as s:
        for method in ("md5", "sha1", "sha256"):
            auth = authorization("77", SIM_KEY, 2**40, method)
            async with s.get(f"{srv.url}/ota/south/check", headers={"Authorization": auth},
                             params={"dev_id": "1", **M5310, "type": "1", "version": "1",
                                     "cdn": "false"}) as r:
                assert (await r.json())["errno"] == 11


async def task_and_token(client: OneNetClient, dev: int = 1) -> Any:
    out = await client.check(req(dev))
    assert isinstance(out, TaskFound), out
    return out.task


async def test_task_life_cycle_and_invalid_states(start_sim: Any) -> None:
    srv = await start_sim(SCENARIO)
    async with OneNetClient(settings_for(srv.url)) as client:
        task = await task_and_token(client)
        sim_task = srv.sim.by_token[task.token]
        assert await client.report_progress(task.token, 1, 150) == 2
        assert await client.check_token(task.token, 2) == 4            # wrong device
        assert await client.check_token(task.token, 1) == 0
        assert sim_task.state == "downloading"
        assert await client.report_progress(task.token, 1, 50) == 0
        assert await client.report_progress(task.token, 1, 100) == 0
        assert sim_task.state == "upgrading"
        assert await client.report_progress(task.token, 1, 30) == 17     # not downloading
        assert await client.check_token(task.token, 1) == 17
        assert await client.report_progress(task.token, 1, 205) == 0     # failed install
        assert sim_task.state == "to_be_upgraded" and sim_task.failures == 1
        assert await client.report_progress(task.token, 1, 101) == 0
        assert await client.report_progress(task.token, 1, 201) == 0
        assert sim_task.state == "succeeded"
        assert srv.sim.devices[1].versions[1] == "1.3"
        assert await client.report_progress(task.token, 1, 201) == 20
        assert isinstance(await client.check(req(1, "1.3")), NoTask)


async def test_failures_past_retry_fail_the_task(start_sim: Any) -> None:
    srv = await start_sim(SCENARIO)
    async with OneNetClient(settings_for(srv.url)) as client:
        task = await task_and_token(client)
        for _ in range(3):                        # retry = 2: the third failure is final
            assert await client.report_progress(task.token, 1, 104) == 0
        assert srv.sim.by_token[task.token].state == "failed"


async def test_version_report_completes_the_task(start_sim: Any) -> None:
    srv = await start_sim(SCENARIO)
    async with OneNetClient(settings_for(srv.url)) as client:
        task = await task_and_token(client)
        assert await client.report_version(1, f_version="1.3") == 0
        assert srv.sim.by_token[task.token].state == "succeeded"
        assert await client.report_version(99, f_version="1.3") == 1


async def test_tokens_expire_after_two_days(start_sim: Any) -> None:
    now = [1_800_000_000.0]
    srv = await start_sim(SCENARIO, clock=lambda: now[0])
    s = settings_for(srv.url, onenet_authorization=authorization("123123", SIM_KEY, 2**40))
    async with OneNetClient(s) as client:
        first = await task_and_token(client)
        now[0] += 2 * 24 * 3600 - 10
        assert (await task_and_token(client)).token == first.token
        now[0] += 20
        assert await client.check_token(first.token, 1) == 12
        assert await client.report_progress(first.token, 1, 10) == 12
        async with aiohttp.ClientSession() as http, http.get(
                f"{srv.url}/ota/south/download/{first.token}") as r:
            assert await r.read() == b"3"
        fresh = await task_and_token(client)
        assert fresh.token != first.token
        assert await client.check_token(fresh.token, 1) == 0


async def test_download_ranges_and_md5(start_sim: Any) -> None:
    srv = await start_sim(SCENARIO)
    async with OneNetClient(settings_for(srv.url)) as client:
        task = await task_and_token(client)
    url = f"http://{task.ip_port}/ota/south/download/{task.token}"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            whole = await r.read()
            assert r.status == 200 and len(whole) == task.size
            assert hashlib.md5(whole).hexdigest() == task.md5
        for header, expect in [("0-99", whole[:100]), ("bytes=0-99", whole[:100]),
                               ("4900-", whole[4900:]), ("bytes=4900-", whole[4900:]),
                               ("-100", whole[-100:]), ("bytes=-100", whole[-100:]),
                               ("4990-9999", whole[4990:])]:
            async with s.get(url, headers={"Range": header}) as r:
                assert r.status == 206, header
                assert await r.read() == expect, header
                assert r.headers["Content-Range"].endswith("/5000")
        async with s.get(f"http://{task.ip_port}/ota/download/{task.token}") as r:
            assert await r.read() == whole
        for header, digit in [("abc", b"5"), ("5-2", b"2"), ("bytes=6000-", b"2"),
                              ("1-2,5-6", b"5")]:
            async with s.get(url, headers={"Range": header}) as r:
                assert await r.read() == digit, header
                assert r.headers.get("Content-Length") is None


async def test_forced_download_error_digit(start_sim: Any) -> None:
    srv = await start_sim({**SCENARIO, "download_errors": {"1": 6}})
    async with OneNetClient(settings_for(srv.url)) as client:
        task = await task_and_token(client)
    async with aiohttp.ClientSession() as s, s.get(
            f"http://{task.ip_port}/ota/south/download/{task.token}") as r:
        assert await r.read() == b"6"


async def test_fault_injection(start_sim: Any) -> None:
    srv = await start_sim({**SCENARIO, "faults": {"errno7_rate": 1.0, "seed": 1}})
    async with OneNetClient(settings_for(srv.url)) as client:
        out = await client.check(req(1))
        assert isinstance(out, Retryable) and out.errno == 7
        async with aiohttp.ClientSession() as s, s.put(
                f"{srv.url}/sim/faults", json={"drop_rate": 1.0}) as r:
            assert r.status == 200
        dropped = await client.check(req(1))
        assert isinstance(dropped, Retryable) and dropped.reason == "transport"
        async with aiohttp.ClientSession() as s, s.put(
                f"{srv.url}/sim/faults", json={"latency_ms": 3000, "drop_rate": 0}) as r:
            assert r.status == 200       # fields left out (errno7_rate) keep their value
        slow = await client.check(req(1))
        assert isinstance(slow, Retryable) and slow.reason == "timeout"
        async with aiohttp.ClientSession() as s:
            for bad in ({"errno7_rate": 2}, {"drop_rate": "nan"}, {"latency_ms": -1},
                        {"colour": 1}, [1]):
                async with s.put(f"{srv.url}/sim/faults", json=bad) as r:
                    assert r.status == 400, bad
            async with s.put(f"{srv.url}/sim/faults",
                             data=b'{"errno7_rate": NaN}',
                             headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400


async def test_client_against_a_misbehaving_server(bad_server: Any) -> None:
    m, url = bad_server
    s = dataclasses.replace(settings_for(url), onenet_timeout=0.5)
    async with OneNetClient(s) as client:
        expected = {"garbage": ProtocolError, "500": Retryable, "slow": Retryable,
                    "close": Retryable, "wrong_types": ProtocolError, "html": ProtocolError}
        for mode, kind in expected.items():
            m.mode = mode
            out = await client.check(req(1))
            assert isinstance(out, kind), (mode, out)
        m.mode = "garbage"
        assert await client.report_progress("tok", 1, 10) is None
        assert await client.check_token("tok", 1) is None
        m.mode = "close"
        assert await client.report_version(1, "1.0") is None
        m.mode = "ok"
        assert isinstance(await client.check(req(1)), NoTask)


async def test_breaker_stops_calls_while_the_endpoint_is_down(bad_server: Any) -> None:
    m, url = bad_server
    m.mode = "500"
    now = [0.0]
    client = OneNetClient(settings_for(url), clock=lambda: now[0],
                          breaker=Breaker(threshold=5, cooldown=10))
    async with client:
        for _ in range(5):
            await client.check(req(1))
        assert m.calls == 5 and client.breaker_open()
        for _ in range(50):
            out = await client.check(req(1))
            assert isinstance(out, Retryable) and out.reason == "breaker_open"
        assert m.calls == 5
        now[0] = 11
        m.mode = "ok"
        assert isinstance(await client.check(req(1)), NoTask)
        assert not client.breaker_open() and m.calls == 6


async def test_token_source_renews_before_expiry() -> None:

    now = [1_000_000.0]
    src = TokenSource(settings_for("http://x"), clock=lambda: now[0], lifetime=3600, margin=300)
    first = src.header()
    assert first is not None and "et=1003600" in first
    now[0] += 3000
    assert src.header() == first
    now[0] += 400
    assert src.header() != first
    fixed = TokenSource(Settings(onenet_authorization="abc"))
    assert fixed.header() == "abc"
    assert TokenSource(Settings()).header() is None


def test_scenario_errors_are_clear(tmp_path: Any) -> None:

    f = tmp_path / "s.json"
    f.write_text(json.dumps({"tasks": [{"package": "nope"}]}))
    with pytest.raises(ScenarioError, match=r"tasks\[0\]: package 'nope' is not defined"):
        load_scenario(f)
    f.write_text("{")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenario(f)
    f.write_text(json.dumps({"packages": [{"id": "a", "version": "1 0"}]}))
    with pytest.raises(ScenarioError, match="packages"):
        load_scenario(f)


def test_example_scenario_loads() -> None:
    s = load_scenario(Path(__file__).parents[2] / "deploy" / "onenet-scenario.toml")
    assert s.product_id == "123123" and len(s.devices) == 4 and s.script == {2: (7, 7)}


def test_simulator_and_fleet_flags_refuse_bad_values() -> None:
    for args, word in [(["simulate", "onenet", "--errno7-rate", "5"], "between 0 and 1"),
                       (["simulate", "onenet", "--drop-rate", "x"], "not a number"),
                       (["simulate", "onenet", "--latency-ms", "-3"], ">= 0"),
                       (["simulate", "fleet", "--install-failure-rate", "1.5"],
                        "between 0 and 1"),
                       (["simulate", "fleet", "--bandwidth", "-1"], ">= 0"),
                       (["simulate", "fleet", "--devices", "0"], "at least 1"),
                       (["simulate", "onenet", "--server", "nginx"], "invalid choice"),
                       (["simulate", "onenet", "--server", "granian", "--port", "0"],
                        "a port of its own"),
                       (["simulate", "onenet", "--server", "granian", "--drop-rate", "0.1"],
                        "use the default server")]:
        out = run_cli(*args, timeout=30)
        assert out.returncode == 2, (args, out.stderr)
        assert word in out.stderr, (args, out.stderr)


async def test_sibling_calls_answer_garbage_bodies_with_errno_2(start_sim: Any) -> None:
    """The version and progress bodies (read with orjson): not JSON, not UTF-8, not an
    object, a wrong step — each a clear errno 2; the task is untouched and goes on."""
    srv = await start_sim(SCENARIO)
    auth = {"Authorization": authorization("123123", SIM_KEY, 2**40),
            "Content-Type": "application/json"}
    async with OneNetClient(settings_for(srv.url)) as client, aiohttp.ClientSession() as s:
        task = await task_and_token(client)
        not_an_object = (b"{not json", b"\xff\xfe", b"[1, 2]")
        for body in not_an_object:
            async with s.post(f"{srv.url}/ota/device/version", params={"dev_id": "1"},
                              data=body, headers=auth) as r:
                assert (await r.json())["errno"] == 2, body
        for body in (*not_an_object, b'{"step": "50"}', b'{"step": 1e999}'):
            async with s.post(f"{srv.url}/ota/south/device/download/{task.token}/progress",
                              params={"dev_id": "1"}, data=body, headers=auth) as r:
                assert (await r.json())["errno"] == 2, body
        assert srv.sim.by_token[task.token].state == "to_be_upgraded"
        assert await client.check_token(task.token, 1) == 0
        assert await client.report_progress(task.token, 1, 50) == 0


async def test_an_error_text_with_a_nul_is_recorded_not_a_stuck_batch(
        bad_server: Any, pool: Any) -> None:
    """The endpoint's error text goes into the device's row and event: a NUL in it (which
    PostgreSQL's text refuses) once failed the whole batch's record, so its devices were
    claimed and checked again after every lease, for ever."""
    m, url = bad_server
    m.mode = "nul_error"
    async with pool.acquire() as conn:
        await devices.seed(conn, 3)
        cid = await create_campaign(conn, CampaignSpec("nul", "fota", "1.3", all_devices=True),
                                    start=True)
    s = settings_for(url)
    async with OneNetClient(s) as client:
        scheduler = Scheduler(s, PgDatabase(pool), client, cast(Any, None), Metrics(), "t")
        assert await scheduler.tick() == 3
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT state, last_errno, last_error FROM"
                                " ota.campaign_devices WHERE campaign_id = $1", cid)
    assert [(r["state"], r["last_errno"]) for r in rows] == [("failed", 1)] * 3
    assert all(r["last_error"].startswith("no\ufffdsuch device") and
               len(r["last_error"]) == 200 for r in rows)


async def test_the_granian_check_server_answers_as_the_aiohttp_one(start_sim: Any) -> None:
    """``simulate onenet --server granian`` carries the same simulator: the same requests,
    in the same order, get the same answers (tokens aside: they are random) and counts."""
    scenario = {**SCENARIO, "credentials": {"product_id": "123123", "access_key": SIM_KEY},
                "server": {"ip_port": "cdn.example:80"}}
    aio = await start_sim(scenario)
    sim = Simulator(parse_scenario(scenario))
    port = free_port()
    good = {"Authorization": authorization("123123", SIM_KEY, 2**40)}
    bad = {"Authorization": authorization("123123", SIM_KEY, 1)}      # expired
    found = {"dev_id": 1, **M5310, "type": 1, "version": "1.2", "cdn": True}
    calls: list[tuple[str, str, dict[str, str], bytes]] = [
        ("POST", "", good, json.dumps(found).encode()),
        ("POST", "", good, json.dumps(found).encode()),              # the same task again
        ("POST", "", bad, json.dumps(found).encode()),
        ("POST", "", {}, json.dumps(found).encode()),
        ("POST", "", good, b"{not json"),
        ("POST", "", good, b"[1, 2]"),
        ("POST", "", good, json.dumps({"dev_id": 1}).encode()),
        ("POST", "", good, json.dumps({**found, "version": "1.2 beta"}).encode()),
        ("POST", "", good, json.dumps({**found, "dev_id": 4, "version": "1.3"}).encode()),
        ("POST", "", good, json.dumps({**found, "dev_id": 6}).encode()),  # scripted errno 7
        ("POST", "", good, json.dumps({**found, "dev_id": 99}).encode()),  # not registered
        ("POST", "", good, json.dumps({**found, "dev_id": 3, **{
            "manuf": "Quectel Wireless Solutions Co., Ltd.", "model": "BC28"},
            "version": "2.0"}).encode()),
        ("GET", "?dev_id=2&manuf=China%20Mobile&model=M5310&type=1&version=1.2&cdn=false",
         good, b""),
        ("GET", "?dev_id=2&manuf=China%20Mobile&type=1", good, b""),
        ("POST", "", good, b"x" * (1024 * 1024 + 1)),
    ]

    def comparable(status: int, body: bytes) -> tuple[int, Any]:
        if status != 200:
            return status, None
        doc = json.loads(body)
        if isinstance(doc.get("data"), dict):
            doc["data"].pop("token", None)
        return status, doc

    async def run_all(base: str) -> list[tuple[int, Any]]:
        out = []
        async with aiohttp.ClientSession() as http:
            for method, query, headers, body in calls:
                async with http.request(method, f"{base}/ota/south/check{query}",
                                        headers=headers, data=body or None) as resp:
                    out.append(comparable(resp.status, await resp.read()))
        return out

    async with fast.serving(sim, "127.0.0.1", port):
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{base}/sim/state"):
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        on_granian = await run_all(base)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/sim/state") as resp:
                state = await resp.json()
            async with http.get(f"{base}/ota/device/version") as resp:
                assert resp.status == 404      # the other calls are the default server's

            async def chunked(size: int) -> AsyncIterator[bytes]:
                # a body with no Content-Length: counted as it arrives
                yield json.dumps({**found, "dev_id": 2, "pad": "x" * size}).encode()
            async with http.post(f"{base}/ota/south/check", headers=good,
                                 data=chunked(10)) as resp:
                assert (await resp.json())["errno"] == 0
            async with http.post(f"{base}/ota/south/check", headers=good,
                                 data=chunked(1024 * 1024)) as resp:
                assert resp.status == 413
            async with http.get(f"{base}/sim/state") as resp:
                assert (await resp.json())["checks"]["0"] == 5
    on_aiohttp = await run_all(aio.url)
    assert on_granian == on_aiohttp
    errnos = [doc["errno"] if doc else status for status, doc in on_granian]
    assert errnos == [0, 0, 1, 1, 2, 2, 2, 27, 11, 7, 1, 0, 0, 2, 413]
    assert on_granian[0][1]["data"]["ipPort"] == "cdn.example:80"
    assert state == aio.sim.state_doc()         # devices, tasks and counts by errno
    assert state["checks"] == {"0": 4, "1": 3, "11": 1, "2": 4, "27": 1, "7": 1}
