"""The load generator of ``bench ingest``, in its own process so it does not share our event
loop: ``main([HOST, PORT, PREFIX, N, DEVICES])`` (see ``start_publisher``) writes
pre-encoded MQTT 3.1.1 QoS 1 PUBLISH packets straight to the socket and counts the PUBACKs,
so the measurement is bounded by the broker and the subscriber, not by a Python client on
the sending side."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Protocol

from orchestrator.config import Settings
from orchestrator.mqtt import topics
from orchestrator.sim.mqttlite import mqtt_string, varint


def publisher_main(argv: list[str]) -> int:
    """Publish ``N`` status messages over ``DEVICES`` device ids; exit when all are acked."""
    sock = socket
    host, port, prefix, n, devices = argv[0], int(argv[1]), argv[2], int(argv[3]), int(argv[4])
    payloads = [json.dumps({"manuf": "China Mobile", "model": "M5310",
                            "fota_version": f"1.{i % 5}", "signal": i % 31,
                            "power": i % 100}).encode() for i in range(64)]
    s = sock.create_connection((host, port))
    s.setsockopt(sock.IPPROTO_TCP, sock.TCP_NODELAY, 1)
    body = mqtt_string("MQTT") + bytes([4, 0x02, 0, 60]) + mqtt_string(f"benchpub{os.getpid()}")
    s.sendall(b"\x10" + varint(len(body)) + body)
    if s.recv(4)[:1] != b"\x20":
        raise SystemExit("publisher: CONNACK expected")
    acked = 0
    window = 20_000
    pending = b""
    sent = 0
    while acked < n:
        chunk: list[bytes] = []
        while sent < n and sent - acked < window and len(chunk) < 2000:
            pid = sent % 65535 + 1
            topic = mqtt_string(topics.status(prefix, 1 + sent % devices))
            payload = payloads[sent % 64]
            rest = topic + pid.to_bytes(2, "big") + payload
            chunk.append(b"\x32" + varint(len(rest)) + rest)
            sent += 1
        if chunk:
            s.sendall(b"".join(chunk))
        if sent - acked >= window or sent >= n or not chunk:
            data = pending + s.recv(65536)
            whole = len(data) // 4
            acked += whole
            pending = data[whole * 4:]
    s.sendall(b"\xe0\x00")
    s.close()
    return 0


async def _device(host: str, port: int, prefix: str, dev_id: int, count: int,
                  payload: bytes, rng: random.Random) -> int:
    """One device: its own connection, ``count`` QoS 1 reports, one in flight at a time,
    at its own pace (a random pause of up to a millisecond between reports)."""
    reader, writer = await asyncio.open_connection(host, port)
    body = mqtt_string("MQTT") + bytes([4, 0x02, 0, 60]) + mqtt_string(f"dev{dev_id}-{os.getpid()}")
    writer.write(b"\x10" + varint(len(body)) + body)
    if (await reader.readexactly(4))[:1] != b"\x20":
        raise SystemExit("device: CONNACK expected")
    topic = mqtt_string(topics.status(prefix, dev_id))
    for k in range(count):
        rest = topic + (k % 65535 + 1).to_bytes(2, "big") + payload
        writer.write(b"\x32" + varint(len(rest)) + rest)
        await reader.readexactly(4)                       # PUBACK
        await asyncio.sleep(rng.random() / 1000)
    writer.write(b"\xe0\x00")
    writer.close()
    return count


def devices_main(argv: list[str]) -> int:
    """``devices HOST PORT PREFIX N FIRST CONNECTIONS``: CONNECTIONS device connections,
    ids FIRST.., sending N reports in all."""
    host, port, prefix = argv[0], int(argv[1]), argv[2]
    n, first, conns = int(argv[3]), int(argv[4]), int(argv[5])
    payload = json.dumps({"manuf": "China Mobile", "model": "M5310", "fota_version": "1.2",
                          "signal": 20, "power": 80}).encode()
    rng = random.Random(first)

    async def run() -> None:
        per = [n // conns + (1 if i < n % conns else 0) for i in range(conns)]
        await asyncio.gather(*(_device(host, port, prefix, first + i, per[i], payload, rng)
                               for i in range(conns) if per[i]))

    asyncio.run(run())
    return 0


# run as a script by import, not ``-m`` (the package imports this module first)
_SELF = [sys.executable, "-c", "import sys; from orchestrator.tools.bench.load import main; "
         "sys.exit(main(sys.argv[1:]))"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["devices"]:
        return devices_main(argv[1:])
    return publisher_main(argv)


def start_publisher(settings: Settings, prefix: str, n: int, devices: int
                    ) -> subprocess.Popen[bytes]:
    u = settings.mqtt_url
    return subprocess.Popen([*_SELF, u.host, str(u.port), prefix, str(n), str(devices)])


def start_devices(settings: Settings, prefix: str, n: int, connections: int,
                  processes: int = 2) -> list[subprocess.Popen[bytes]]:
    """``connections`` device connections over ``processes`` processes, ``n`` reports."""
    u = settings.mqtt_url
    per = connections // processes
    return [subprocess.Popen([*_SELF, "devices", u.host, str(u.port), prefix,
                              str(n // processes + (p < n % processes)), str(1 + p * per),
                              str(per)]) for p in range(processes)]


class Polled(Protocol):
    def poll(self) -> int | None: ...


async def idle_done(pub: Polled, progress: Callable[[], int], n: int,
                     idle: float = 3.0, limit: float = 600.0) -> None:
    """Until ``n`` arrived, or the publisher is done and nothing arrived for ``idle`` s (a
    broker past its queue limits drops messages for slow subscribers)."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while progress() < n and time.monotonic() < deadline:
        now = progress()
        if now != last:
            last, last_change = now, time.monotonic()
        elif pub.poll() is not None and time.monotonic() - last_change > idle:
            return
        await asyncio.sleep(0.01)

