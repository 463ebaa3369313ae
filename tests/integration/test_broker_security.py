"""Per-device broker accounts through the real CLI, against a Mosquitto running the
dynamic security plugin with no anonymous access: a device speaks only for itself."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from conftest import free_port, run_cli, start_mosquitto

PLUGINS = ["/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
           "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
           "/usr/lib/mosquitto_dynamic_security.so"]


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[int, str]]:
    plugin = next((p for p in PLUGINS if Path(p).exists()), None)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if plugin is None or not Path(binary).exists():
        pytest.skip("mosquitto with its dynamic security plugin is not installed")
    port = free_port()
    dynsec = tmp_path / "dynamic-security.json"
    env = {**os.environ, "ORCH_MQTT_URL": f"mqtt://127.0.0.1:{port}", "ORCH_LOG_FORMAT": "json"}
    out = run_cli("broker", "init", str(dynsec), env=env)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip().split("=", 1)[1]
    user = "user root\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"plugin {plugin}\nplugin_opt_config_file {dynsec}\n"
                    f"log_dest file {tmp_path}/mosquitto.log\n")
    proc = start_mosquitto(conf, port)
    yield port, url
    proc.terminate()
    proc.wait(10)


def credentials(url: str, dev_id: int) -> str:
    out = run_cli("device", "credentials", str(dev_id), "--json",
                  env={**os.environ, "ORCH_MQTT_URL": url, "ORCH_LOG_FORMAT": "json"})
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["password"])


async def test_a_device_speaks_only_for_itself(secure_broker: tuple[int, str]) -> None:
    port, url = secure_broker
    orch_user, orch_pw = url.removeprefix("mqtt://").split("@")[0].split(":")
    first = credentials(url, 6523)
    other = credentials(url, 6524)
    rotated = credentials(url, 6523)
    assert rotated != first
    got: list[tuple[str, bytes]] = []
    async with aiomqtt.Client("127.0.0.1", port, username=orch_user, password=orch_pw) as orch:
        await orch.subscribe("ota/+/status", qos=1)
        await orch.subscribe("ota/+/progress", qos=1)
        async with aiomqtt.Client("127.0.0.1", port, username="6523", password=rotated,
                                  protocol=aiomqtt.ProtocolVersion.V5) as dev:
            await dev.publish("ota/6523/status", b"mine", qos=1)
            await dev.publish("ota/6524/progress", b"forged", qos=1)
            await dev.publish("ota/6524/status", b"forged", qos=1)
            granted = await dev.subscribe("ota/6524/command", qos=1)
            assert "Not authorized" in str(granted)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                async for m in orch.messages:
                    got.append((m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]
    assert got == [("ota/6523/status", b"mine")]
    for user, password in ((None, None), ("6523", first), ("6524", "guess")):
        with pytest.raises(aiomqtt.MqttError, match=r"Not authorized|135|5"):
            async with aiomqtt.Client("127.0.0.1", port, username=user, password=password):
                pass
    async with aiomqtt.Client("127.0.0.1", port, username="6524", password=other):
        pass
