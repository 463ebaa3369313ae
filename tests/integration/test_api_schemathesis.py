"""Schemathesis over the ops API (bounded: 25 examples per operation, deterministic): no
500, no status the OpenAPI document does not state, responses as documented, schema-
violating input refused. Rules a schema cannot express (waves increasing to 100, listed
devices existing) are checked by the API with a 400 naming the field, so the
'schema-valid input accepted' check is left out."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import free_port
from orchestrator.api.app import ApiState, build_app
from orchestrator.config import Settings
from orchestrator.metrics import Metrics


async def test_schemathesis_finds_nothing(pool: Any, settings: Settings) -> None:
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    if not Path(st).exists():
        pytest.fail("schemathesis is a test dependency: pip install -e '.[test]'")
    port = free_port()
    s = dataclasses.replace(settings, api_token="tok", api_listen=f"127.0.0.1:{port}")
    runner = web.AppRunner(build_app(ApiState(s, pool, Metrics(), lambda: {"mqtt": True})))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            st, "run", f"http://127.0.0.1:{port}/api/v1/openapi.json",
            "-H", "Authorization: Bearer tok", "-n", "25", "--generation-deterministic",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--max-response-time", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        await runner.cleanup()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert " passed" in text
