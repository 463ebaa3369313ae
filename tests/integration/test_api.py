"""The ops API over real HTTP against a real database."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.api.app import ApiState, build_app
from orchestrator.config import ConfigError, Settings, load_settings
from orchestrator.domain.accounts import verify
from orchestrator.domain.payloads import StatusReport
from orchestrator.metrics import Metrics
from orchestrator.store.devices import upsert_status


@pytest.fixture
async def api(pool: Any, settings: Settings) -> Any:
    async def make(token: str | None = None, listen: str = "127.0.0.1:0") -> str:

        s = dataclasses.replace(settings, api_token=token, api_listen=listen)
        runner = web.AppRunner(build_app(ApiState(s, pool, Metrics(), lambda: {"mqtt": True})))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    runners: list[web.AppRunner] = []
    async with pool.acquire() as conn:
        await upsert_status(conn, [StatusReport(i, "China Mobile", "M5310", "1.2", None, 20, 80)
                                   for i in range(1, 11)])
    yield make
    for r in runners:
        await r.cleanup()


async def call(method: str, url: str, body: Any = None, headers: Any = None,
               raw: bytes | None = None) -> tuple[int, Any]:
    """Mutating calls go as ``application/json`` unless ``headers`` say otherwise."""
    sent = {} if method == "GET" else {"Content-Type": "application/json"}
    sent.update(headers or {})
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with aiohttp.ClientSession() as s, s.request(
            method, url, data=data, headers=sent) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def test_campaign_life_cycle(api: Any) -> None:
    url = await api()
    status, c = await call("POST", f"{url}/api/v1/campaigns", {
        "name": "m5310 to 1.3", "type": "fota", "target": "1.3", "model": "M5310",
        "from_versions": ["1.2"], "waves": [10, 100], "max_per_minute": 600,
        "abort_failure_pct": 5, "abort_min_finished": 10})
    assert status == 201, c
    cid = c["campaign_id"]
    assert (c["status"], c["total"], c["pending"], c["waves"]) == ("draft", 10, 10, [10, 100])
    status, listed = await call("GET", f"{url}/api/v1/campaigns")
    assert status == 200 and [x["campaign_id"] for x in listed] == [cid]
    for action, expect in [("start", "running"), ("pause", "paused"), ("resume", "running"),
                           ("cancel", "cancelled")]:
        status, c = await call("POST", f"{url}/api/v1/campaigns/{cid}/{action}")
        assert (status, c["status"]) == (200, expect), c
    status, c = await call("GET", f"{url}/api/v1/campaigns/{cid}")
    assert (c["cancelled"], c["pending"]) == (10, 0)
    status, err = await call("POST", f"{url}/api/v1/campaigns/{cid}/resume")
    assert status == 409 and "cannot resume" in err["error"]
    status, devs = await call("GET", f"{url}/api/v1/campaigns/{cid}/devices?state=cancelled")
    assert status == 200 and len(devs) == 10


async def test_bad_bodies_get_a_4xx_naming_the_field(api: Any) -> None:
    url = await api()
    cases = [
        (None, b"{not json", "body"),
        ([1, 2], None, "body"),
        ({"type": "fota", "target": "1"}, None, "name"),
        ({"name": "x", "type": "xota", "target": "1"}, None, "type"),
        ({"name": "x", "type": "fota", "target": "1 3"}, None, "target"),
        ({"name": "x", "type": "fota", "target": "1", "waves": [50, 10]}, None, "waves"),
        ({"name": "x", "type": "fota", "target": "1", "waves": "1,100"}, None, "waves"),
        ({"name": "x", "type": "fota", "target": "1", "max_per_minute": "fast"}, None,
         "max_per_minute"),
        ({"name": "x", "type": "fota", "target": "1", "max_per_minute": 0}, None,
         "max_per_minute"),
        ({"name": "x", "type": "fota", "target": "1", "devices": [1, "2"]}, None, "devices"),
        ({"name": "x", "type": "fota", "target": "1", "devices": [999]}, None, "devices"),
        ({"name": "x", "type": "fota", "target": "1", "colour": "red"}, None, "colour"),
        ({"name": "x", "type": "fota", "target": "1", "abort_failure_pct": 120}, None,
         "abort_failure_pct"),
    ]
    for body, raw, field in cases:
        status, err = await call("POST", f"{url}/api/v1/campaigns", body, raw=raw)
        assert status == 400, (body, err)
        assert err["error"].startswith(field), (field, err)
    for path, code in [("/api/v1/campaigns/999", 404), ("/api/v1/campaigns/abc", 400),
                       ("/api/v1/campaigns?status=bogus", 400),
                       ("/api/v1/campaigns?limit=-1", 400), ("/api/v1/devices/abc", 400),
                       ("/api/v1/devices/12345", 404), ("/api/v1/nope", 404),
                       ("/api/v1/devices?limit=x", 400)]:
        status, err = await call("GET", url + path)
        assert status == code, (path, err)
        assert "error" in err
    status, _ = await call("POST", f"{url}/api/v1/campaigns/999/pause")
    assert status == 404
    status, _ = await call("DELETE", f"{url}/api/v1/campaigns")
    assert status == 405


async def test_mutating_calls_need_the_bearer_token(api: Any) -> None:
    url = await api(token="s3cret")
    body = {"name": "x", "type": "fota", "target": "1.3", "all_devices": True}
    status, err = await call("POST", f"{url}/api/v1/campaigns", body)
    assert status == 401
    status, _ = await call("POST", f"{url}/api/v1/campaigns", body,
                           headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _ = await call("POST", f"{url}/api/v1/campaigns", body,
                           headers={"Authorization": "Bearer s3cret"})
    assert status == 201
    status, _ = await call("GET", f"{url}/api/v1/campaigns")
    assert status == 401                      # reads need it too once a token is set
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, _ = await call("GET", f"{url}/api/v1/campaigns",
                               headers={"Authorization": f"{scheme} s3cret"})
        assert status == 200, scheme
    for open_path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
        assert (await call("GET", url + open_path))[0] == 200, open_path
    exposed = await api(token=None, listen="0.0.0.0:8080")
    status, err = await call("POST", f"{exposed}/api/v1/campaigns", body)
    assert status == 403 and "ORCH_API_TOKEN" in err["error"]


async def test_devices_health_metrics_openapi(api: Any) -> None:
    url = await api()
    status, devs = await call("GET", f"{url}/api/v1/devices?model=M5310&limit=3&after=2")
    assert status == 200 and [d["dev_id"] for d in devs] == [3, 4, 5]
    status, dev = await call("GET", f"{url}/api/v1/devices/7")
    assert status == 200 and dev["fota_version"] == "1.2"
    assert (await call("GET", f"{url}/healthz"))[0] == 200
    status, ready = await call("GET", f"{url}/readyz")
    assert status == 200 and ready["checks"] == {"mqtt": True, "database": True}
    status, text = await call("GET", f"{url}/metrics")
    assert status == 200 and "orch_ingest_rejected_total" in text
    status, doc = await call("GET", f"{url}/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/api/v1/campaigns", "/api/v1/campaigns/{id}/cancel",
            "/api/v1/devices/{id}"} <= set(doc["paths"])


async def test_a_read_token_reads_and_cannot_change(api: Any, pool: Any,
                                                    settings: Settings) -> None:
    s = dataclasses.replace(settings, api_token="admin", api_read_token="viewer",
                            api_listen="127.0.0.1:0")
    runner = web.AppRunner(build_app(ApiState(s, pool, Metrics(), lambda: {})))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        viewer = {"Authorization": "Bearer viewer"}
        assert (await call("GET", f"{url}/api/v1/devices", headers=viewer))[0] == 200
        status, err = await call("POST", f"{url}/api/v1/campaigns",
                                 {"name": "x", "type": "fota", "target": "1.3"}, viewer)
        assert status == 401 and "ORCH_API_TOKEN" in err["error"]
    finally:
        await runner.cleanup()


async def test_the_thirteen_hostile_requests_get_a_4xx(api: Any) -> None:
    """Each of the inputs that once got a 500, and the cross-site form post."""
    url = await api()
    ok = {"name": "x", "type": "fota", "target": "1.3"}
    deep = b"[" * 100_000 + b"]" * 100_000
    cases: list[tuple[str, str, Any, bytes | None, dict[str, str] | None, int]] = [
        ("GET", "/api/v1/campaigns/" + "9" * 5000, None, None, None, 400),
        ("GET", "/api/v1/devices/" + "9" * 5000, None, None, None, 400),
        ("GET", "/api/v1/devices?after=" + "9" * 5000, None, None, None, 400),
        ("POST", "/api/v1/campaigns", None, deep, None, 400),
        ("POST", "/api/v1/campaigns", {**ok, "name": "a\u0000b"}, None, None, 400),
        ("POST", "/api/v1/campaigns", {**ok, "model": "M\u00005310"}, None, None, 400),
        ("GET", "/api/v1/devices?model=M%005310", None, None, None, 400),
        ("POST", "/api/v1/campaigns", {**ok, "max_per_minute": 2**40}, None, None, 400),
        ("POST", "/api/v1/campaigns", {**ok, "abort_min_finished": 2**70}, None, None, 400),
        ("POST", "/api/v1/campaigns", {**ok, "devices": [2**64]}, None, None, 400),
        ("POST", "/api/v1/campaigns", None, json.dumps(ok).encode(),
         {"Content-Type": "text/plain"}, 415),
        ("POST", "/api/v1/campaigns", None, b"x" * (2 * 1024 * 1024), None, 413),
    ]
    for method, path, body, raw, headers, code in cases:
        data = json.dumps(body).encode() if body is not None else raw
        status, err = await call(method, url + path, None, headers, data)
        assert status == code, (path[:60], status, err)
        assert status < 500
    # a non-UTF-8 Authorization header, sent as raw bytes to a guarded API
    guarded = await api(token="s3cret")
    host, port = guarded.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/v1/campaigns HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer \xff\xfe\xfd\r\nConnection: close\r\n\r\n")
    await writer.drain()
    head = await reader.readline()
    writer.close()
    assert head.split()[1] in (b"400", b"401"), head


def test_an_empty_api_token_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError, match="ORCH_API_TOKEN: empty"):
        load_settings({"ORCH_API_TOKEN": ""})


async def test_retry_through_the_api(api: Any, pool: Any) -> None:
    url = await api()
    status, c = await call("POST", f"{url}/api/v1/campaigns",
                           {"name": "r", "type": "fota", "target": "1.3", "start": True,
                            "all_devices": True})
    assert status == 201, c
    cid = c["campaign_id"]
    async with pool.acquire() as conn:
        await conn.execute("UPDATE ota.campaign_devices SET state = 'failed', last_errno = 8"
                           " WHERE campaign_id = $1 AND dev_id <= 3", cid)
    status, out = await call("POST", f"{url}/api/v1/campaigns/{cid}/retry",
                             {"errno": 8, "reason": "module table fixed"})
    assert status == 200 and out["retried"] == 3, out
    status, err = await call("POST", f"{url}/api/v1/campaigns/{cid}/retry",
                             {"state": "succeeded"})
    assert status == 400 and err["error"].startswith("state")


async def test_patch_changes_a_live_campaign_with_an_event_each(api: Any, pool: Any) -> None:
    url = await api()
    status, c = await call("POST", f"{url}/api/v1/campaigns",
                           {"name": "u", "type": "fota", "target": "1.3", "model": "M5310",
                            "max_per_minute": 60, "abort_failure_pct": 5, "start": True})
    cid = c["campaign_id"]
    status, c = await call("PATCH", f"{url}/api/v1/campaigns/{cid}",
                           {"max_per_minute": 600, "abort_failure_pct": None,
                            "abort_action": "abort"})
    assert status == 200, c
    assert (c["max_per_minute"], c["abort_failure_pct"], c["abort_action"]) == (600, None,
                                                                               "abort")
    async with pool.acquire() as conn:
        reasons = [r["reason"] for r in await conn.fetch(
            "SELECT reason FROM ota.events WHERE campaign_id = $1 AND kind = 'campaign_update'"
            " ORDER BY event_id", cid)]
    assert reasons == ["max_per_minute: 60 -> 600", "abort_failure_pct: 5 -> none",
                       "abort_action: pause -> abort"]
    for body, field in [({"max_per_minute": 0}, "max_per_minute"), ({"waves": [100]}, "waves"),
                        ({}, "changes"), ({"wave_success_pct": 101}, "wave_success_pct")]:
        status, err = await call("PATCH", f"{url}/api/v1/campaigns/{cid}", body)
        assert status == 400 and err["error"].startswith(field), (body, err)
    await call("POST", f"{url}/api/v1/campaigns/{cid}/cancel", {})
    status, err = await call("PATCH", f"{url}/api/v1/campaigns/{cid}", {"max_per_minute": 5})
    assert status == 409


async def test_dry_run_through_the_api(api: Any) -> None:
    url = await api()
    status, plan = await call("POST", f"{url}/api/v1/campaigns?dry_run=true",
                              {"name": "d", "type": "fota", "target": "1.3", "model": "M5310"})
    assert status == 200 and plan["selected"] == 10, plan
    status, listed = await call("GET", f"{url}/api/v1/campaigns")
    assert listed == []


async def test_a_rehearsal_through_the_api_writes_nothing(api: Any) -> None:
    url = await api(token="s3cret")
    body = {"name": "r", "type": "fota", "target": "1.3", "model": "M5310", "waves": [50, 100],
            "max_per_minute": 600}
    status, _ = await call("POST", f"{url}/api/v1/campaigns?rehearse=true", body)
    assert status == 401
    auth = {"Authorization": "Bearer s3cret"}
    status, r = await call("POST", f"{url}/api/v1/campaigns?rehearse=true&runs=2&seed=7",
                           body, auth)
    assert status == 200 and r["selected"] == 10 and r["runs"] == 2 and r["seed"] == 7, r
    v = r["variants"][0]
    assert v["counts"] == {"succeeded": 10} and [w["devices"] for w in v["waves"]] == [5, 5]
    assert r["assumptions"]                      # no history here: defaults, said so
    for query, field in [("rehearse=true&dry_run=true", "dry_run"), ("rehearse=true&runs=0",
                                                                     "runs"),
                         ("rehearse=true&check_rate=0", "check_rate")]:
        status, err = await call("POST", f"{url}/api/v1/campaigns?{query}", body, auth)
        assert status == 400 and field in err["error"], (query, err)
    status, listed = await call("GET", f"{url}/api/v1/campaigns", headers=auth)
    assert listed == []


async def test_the_status_page_is_a_read_route_a_browser_can_log_into(api: Any) -> None:
    url = await api(token="s3cret")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        basic = base64.b64encode(b"anyone:s3cret").decode()
        async with s.get(f"{url}/", headers={"Authorization": f"Basic {basic}"}) as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            assert "OTA campaigns" in page and "<script" not in page
        wrong = base64.b64encode(b"anyone:nope").decode()
        async with s.get(f"{url}/", headers={"Authorization": f"Basic {wrong}"}) as r:
            assert r.status == 401
        async with s.get(f"{url}/", headers={"Authorization": "Basic %%%"}) as r:
            assert r.status == 401
        async with s.get(f"{url}/", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200


async def test_credentials_in_bulk_through_the_api(api: Any, pool: Any) -> None:
    """The same use case as the CLI: secrets in the answer only, stored hashed; unknown
    ids, duplicates of an account without rotate, and reads with the read token refused."""
    url = await api(token="admin")
    admin = {"Authorization": "Bearer admin"}
    status, out = await call("POST", f"{url}/api/v1/credentials", {"dev_ids": [1, 2, 3]},
                             admin)
    assert status == 200 and (out["created"], out["rotated"]) == (3, 0), out
    assert [c["dev_id"] for c in out["credentials"]] == [1, 2, 3]
    async with pool.acquire() as conn:
        stored = await conn.fetch("SELECT salt, hash FROM ota.mqtt_accounts WHERE dev_id = 1")
    assert verify(out["credentials"][0]["password"], stored[0]["salt"], stored[0]["hash"])
    for body, field in [({"dev_ids": [1]}, "devices: 1 already have an account"),
                        ({"dev_ids": [999]}, "devices: 1 not in the registry"),
                        ({"dev_ids": [0]}, "dev_ids[0]"),
                        ({"dev_ids": [4], "all_registered": True}, "devices: give ids"),
                        ({"manuf": "China Mobile"}, "devices: give ids")]:
        status, err = await call("POST", f"{url}/api/v1/credentials", body, admin)
        assert status == 400 and err["error"].startswith(field), (body, err)
    status, out = await call("POST", f"{url}/api/v1/credentials",
                             {"all_registered": True, "rotate": True}, admin)
    assert status == 200 and (out["created"], out["rotated"]) == (7, 3)
    status, out = await call("POST", f"{url}/api/v1/credentials/revoke",
                             {"dev_ids": [1, 2]}, admin)
    assert status == 200 and out == {"revoked": [1, 2], "without_account": 0}
    status, _ = await call("POST", f"{url}/api/v1/credentials", {"dev_ids": [1]})
    assert status == 401
