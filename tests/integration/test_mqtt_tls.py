"""MQTT over TLS with a private CA and client certificates, against a real Mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from conftest import free_port, start_mosquitto
from orchestrator.config import load_settings
from orchestrator.mqtt.connection import make_client


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not shutil.which("openssl") or not Path(binary).exists():
        pytest.skip("openssl or mosquitto not installed")
    d = tmp_path
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ota-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, cn in (("server", "127.0.0.1"), ("client", "orchestrator")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", f"{name}.pem",
                cwd=d)
    port = free_port()
    user = "user root\n" if os.geteuid() == 0 else ""
    (d / "m.conf").write_text(
        f"{user}listener {port} 127.0.0.1\nallow_anonymous true\ncafile {d}/ca.pem\n"
        f"certfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n")
    for f in d.iterdir():
        f.chmod(0o644)
    proc = start_mosquitto(d / "m.conf", port)
    yield port, d
    proc.terminate()
    proc.wait(10)


async def test_private_ca_and_client_certificate(tls_broker: tuple[int, Path]) -> None:
    port, d = tls_broker
    env = {"ORCH_MQTT_URL": f"mqtts://127.0.0.1:{port}",
           "ORCH_MQTT_CA_FILE": str(d / "ca.pem"),
           "ORCH_MQTT_CERT_FILE": str(d / "client.pem"),
           "ORCH_MQTT_KEY_FILE": str(d / "client.key")}
    url = load_settings(env).mqtt_url
    async with make_client(url, "tls-ok") as client:
        await client.subscribe("ota/+/status", qos=1)
    without_cert = load_settings({k: v for k, v in env.items()
                                  if k in ("ORCH_MQTT_URL", "ORCH_MQTT_CA_FILE")}).mqtt_url
    with pytest.raises(aiomqtt.MqttError):
        async with make_client(without_cert, "tls-no-cert"):
            pass
    system_cas = load_settings({"ORCH_MQTT_URL": env["ORCH_MQTT_URL"]}).mqtt_url
    with pytest.raises(aiomqtt.MqttError):       # the private CA is not the system's
        async with make_client(system_cas, "tls-unknown-ca"):
            pass
