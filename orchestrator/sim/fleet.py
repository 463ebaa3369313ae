"""A simulated fleet: thousands of devices in one process, on one MQTT connection, or (with
``accounts``) one connection per device with its own broker account, as a secured fleet
connects.

Each device reports its status periodically (signal and power drift), answers
``{"op": "report"}`` at once, and on ``{"op": "upgrade"}`` downloads the package from the
commanded URL (taking time in proportion to its size at the configured bandwidth), checks
its size and MD5, reports progress with OneNET's step codes, installs, and reports success
(or a configured failure) and its new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiomqtt
import structlog

from orchestrator.config import MqttUrl
from orchestrator.domain.payloads import parse_dev_id
from orchestrator.domain.resilience import backoff
from orchestrator.mqtt import topics
from orchestrator.mqtt.connection import make_client
from orchestrator.sim import mqttlite

log = structlog.get_logger(__name__)


@dataclass
class SimDevice:
    dev_id: int
    manuf: str = "China Mobile"
    model: str = "M5310"
    fota_version: str = "1.2"
    sota_version: str = "app-1"
    signal: int = 20
    power: int = 80
    drift: bool = True
    install_failures: list[int] = field(default_factory=list)   # steps for next installs
    offline_until: float = 0.0
    busy: bool = False
    upgrades: int = 0
    cancelled: bool = False
    attempt: str | None = None
    drop_commands: int = 0        # upgrade commands it loses (never receives), next first
    pattern: str | None = None    # a daily radio pattern (PATTERNS), instead of drifting
    reports: int = 0
    cell: str | None = None
    ce_level: int | None = None

    def status(self) -> dict[str, Any]:
        out = {"manuf": self.manuf, "model": self.model, "fota_version": self.fota_version,
               "sota_version": self.sota_version, "signal": self.signal, "power": self.power}
        if self.cell is not None:
            out["cell"] = self.cell
        if self.ce_level is not None:
            out["ce_level"] = self.ce_level
        return out


# Daily radio patterns of NB-IoT devices: (signal, power) at a fraction of the day. Cells are
# loaded by day; meters charge or have solar power; some sit in a basement; some flap.
def _night(frac: float) -> bool:
    return frac < 0.25 or frac >= 0.875           # 21:00-06:00


PATTERNS: dict[str, Any] = {
    "steady": lambda frac, n: (22, 80),
    "weak_by_day": lambda frac, n: (24, 80) if _night(frac) else (5, 80),
    "charging_at_night": lambda frac, n: (22, 90) if _night(frac) else (22, 12),
    "always_weak": lambda frac, n: (4, 80),
    "flapping": lambda frac, n: (24, 80) if n % 2 else (6, 80),
}


def apply_pattern(dev: SimDevice, t: float, period: float, n: int) -> None:
    """The device's signal and power at time ``t`` of a ``period``-second day."""
    assert dev.pattern is not None
    dev.signal, dev.power = PATTERNS[dev.pattern]((t % period) / period, n)


@dataclass(frozen=True)
class FleetConfig:
    status_interval: float = 30.0
    bandwidth: float = 1_000_000.0       # bytes per second per device; 0: unlimited
    install_time: float = 0.2
    download_failure_rate: float = 0.0   # reports a random 102..107
    install_failure_rate: float = 0.0    # reports a random 202..206
    offline_rate: float = 0.0            # chance per status tick to go offline
    offline_seconds: float = 30.0
    progress_every: int = 50             # percent between download progress reports
    verify_md5: bool = True
    seed: int | None = None
    day: float = 86400.0                 # the day devices' radio patterns follow
    publish_timeout: float = 10.0        # seconds a QoS 1 publish waits for its PUBACK


class Fleet:
    def __init__(self, url: MqttUrl, prefix: str, devices: list[SimDevice],
                 config: FleetConfig | None = None, client_id: str | None = None,
                 v5: bool = True, accounts: Mapping[int, str] | None = None) -> None:
        """``accounts``: each device's broker password (its user name is its id); every
        device then holds a connection of its own (MQTT 3.1.1, persistent session)."""
        self.url = url
        self.accounts = accounts
        if accounts is not None:
            missing = [d.dev_id for d in devices if d.dev_id not in accounts]
            if missing:
                raise ValueError(f"no broker account for device(s) {missing[:10]}")
        self._links: dict[int, mqttlite.Connection] = {}
        self._reporting: set[int] = set()
        self._sending = asyncio.Semaphore(256)
        self._link_up: dict[int, asyncio.Event] = {}
        self.prefix = prefix
        self.devices = {d.dev_id: d for d in devices}
        self.config = config or FleetConfig()
        self.rng = random.Random(self.config.seed)
        self.client_id = client_id
        self.v5 = v5
        self.client: aiomqtt.Client | None = None
        self.http: aiohttp.ClientSession | None = None
        self.stats: Counter[str] = Counter()
        self.commands: list[tuple[int, dict[str, Any]]] = []
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._superseded = asyncio.Event()     # set when the current connection is replaced

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """QoS 1, like a device with a persistent outgoing queue: while the broker is away
        the message waits for the reconnection instead of being lost."""
        text = json.dumps(payload)
        if self.accounts is not None:
            parts = topic.split("/")
            await self._publish_own(int(parts[1]), topic, text.encode())
            return
        while True:
            await self.connected.wait()
            client, superseded = self.client, self._superseded
            try:
                assert client is not None
                await client.publish(topic, text, qos=1)
                return
            except (aiomqtt.MqttError, AssertionError):
                # A lost connection is noticed by the connection loop, which replaces it;
                # a publish that timed out on a live one (a broker slow under load) is
                # sent again on it, as a device's outgoing queue would.
                self.stats["publish_retries"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(superseded.wait(), self.config.publish_timeout)

    async def _publish_own(self, dev_id: int, topic: str, payload: bytes) -> None:
        """On the device's own connection, waiting for it (as the shared one does)."""
        while True:
            await self._link_up[dev_id].wait()
            link = self._links.get(dev_id)
            try:
                assert link is not None
                async with self._sending:
                    await link.publish(topic, payload)
                return
            except (mqttlite.MqttLiteError, OSError, AssertionError, TimeoutError):
                await asyncio.sleep(0.2)      # the device's loop reconnects

    async def report_status(self, dev: SimDevice) -> None:
        if time.monotonic() < dev.offline_until:
            return
        if dev.pattern is not None:     # the radio of this moment of its day
            dev.reports += 1
            apply_pattern(dev, time.time(), self.config.day, dev.reports)
        await self.publish(topics.status(self.prefix, dev.dev_id), dev.status())
        self.stats["status"] += 1

    async def report_all(self, batch: int = 64) -> None:
        devs = list(self.devices.values())
        if self.accounts is not None:
            # each device on its own connection: one that cannot connect (refused, say)
            # must not hold the others' reports back; one report waiting per device
            waiting = [d for d in devs if d.dev_id not in self._reporting]
            self._reporting.update(d.dev_id for d in waiting)
            for d in waiting:
                self._spawn(self._report_own(d))
            return
        for i in range(0, len(devs), batch):
            await asyncio.gather(*(self.report_status(d) for d in devs[i:i + batch]))

    async def _report_own(self, dev: SimDevice) -> None:
        try:
            await self.report_status(dev)
        finally:
            self._reporting.discard(dev.dev_id)

    async def progress(self, dev: SimDevice, campaign: int, step: int,
                       version: str | None = None) -> None:
        payload: dict[str, Any] = {"campaign": campaign, "step": step}
        if dev.attempt is not None:
            payload["attempt"] = dev.attempt
        if version:
            payload["version"] = version
        await self.publish(topics.progress(self.prefix, dev.dev_id), payload)
        self.stats[f"step_{step}"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (again after a broker restart, with backoff) until ``stop``."""
        timeout = aiohttp.ClientTimeout(total=600, sock_connect=10)
        connector = aiohttp.TCPConnector(limit=1000)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            self.http = http
            if self.accounts is not None:
                await self._run_devices(stop)
                return
            attempt = 0
            while not stop.is_set():
                try:
                    await self._connection(stop)
                    attempt = 0
                except aiomqtt.MqttError as exc:
                    self.connected.clear()
                    self.client = None
                    self.stats["reconnects"] += 1
                    log.info("fleet connection lost", error=str(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff(attempt, 0.2, 2.0))
                    attempt += 1
            ticker = [self._tick_task] if self._tick_task else []
            for t in [*ticker, *self._tasks]:
                t.cancel()
            await asyncio.gather(*ticker, *self._tasks, return_exceptions=True)
            self.connected.clear()

    async def _connection(self, stop: asyncio.Event) -> None:
        first = self.stats["connects"] == 0
        async with make_client(self.url, self.client_id, v5=self.v5,
                               persistent=self.client_id is not None,
                               session_expiry=3600, max_inflight_messages=1000,
                               timeout=self.config.publish_timeout) as client:
            previous, self._superseded = self._superseded, asyncio.Event()
            self.client = client
            previous.set()
            await client.subscribe(topics.command(self.prefix), qos=1)
            self.stats["connects"] += 1
            self.connected.set()
            if first:   # in the background: a publish waits for a reconnection
                self._spawn(self.report_all())
            if self._tick_task is None:
                self._tick_task = asyncio.create_task(self._ticker(stop))
            reader = asyncio.create_task(self._reader())
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({reader, stopper},
                                         return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()
            stopper.cancel()
            await asyncio.gather(reader, stopper, return_exceptions=True)
            if reader in done and not stop.is_set():
                raise aiomqtt.MqttError("command stream ended")
            self.connected.clear()

    async def _run_devices(self, stop: asyncio.Event) -> None:
        """One connection per device, each with its own account; ``connected`` once the
        broker answered every device once (``stats["refused"]`` counts those it turned away:
        they keep trying, as devices do)."""
        self._link_up = {d: asyncio.Event() for d in self.devices}
        first = [asyncio.Event() for _ in self.devices]
        gate = asyncio.Semaphore(200)       # connections being opened at once
        loops = [asyncio.create_task(self._device_loop(dev, stop, gate, up))
                 for dev, up in zip(self.devices.values(), first, strict=True)]
        async def all_tried() -> None:
            await asyncio.gather(*(e.wait() for e in first))

        tried = asyncio.ensure_future(all_tried())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            # every device tried once, or a stop (a broker that never answers must not keep
            # a stopped fleet waiting for its first connections)
            await asyncio.wait([tried, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                self.connected.set()
                self._spawn(self.report_all())
                self._tick_task = asyncio.create_task(self._ticker(stop))
                await stop.wait()
        finally:
            tried.cancel()
            stopped.cancel()
            for t in [*loops, *([self._tick_task] if self._tick_task else []), *self._tasks]:
                t.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)
            await asyncio.gather(*(link.close() for link in self._links.values()),
                                 return_exceptions=True)
            self.connected.clear()

    async def _device_loop(self, dev: SimDevice, stop: asyncio.Event,
                           gate: asyncio.Semaphore, first: asyncio.Event) -> None:
        assert self.accounts is not None
        attempt = 0
        up = self._link_up[dev.dev_id]
        command_topic = topics.command(self.prefix, dev.dev_id)

        def on_message(topic: str, payload: bytes) -> None:
            if topic == command_topic:
                self._command(dev, payload)

        while not stop.is_set():
            try:
                async with gate:
                    link = await mqttlite.connect(
                        self.url.host, self.url.port, str(dev.dev_id), on_message,
                        username=str(dev.dev_id), password=self.accounts[dev.dev_id])
                    granted = await link.subscribe(command_topic)
                if granted >= 0x80:
                    await link.close()
                    raise mqttlite.MqttLiteError(f"subscription refused ({granted})")
                self._links[dev.dev_id] = link
                self.stats["connects"] += 1
                up.set()
                first.set()
                attempt = 0
                closed = asyncio.ensure_future(link.closed.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closed, stopper}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                stopper.cancel()
                up.clear()
                if not stop.is_set():
                    self.stats["reconnects"] += 1
            except (mqttlite.MqttLiteError, OSError, TimeoutError) as exc:
                self.stats["connect_errors"] += 1
                if isinstance(exc, mqttlite.Refused):    # the broker answered: it was tried
                    if not first.is_set():
                        self.stats["refused"] += 1
                    first.set()
                log.debug("device connection failed", dev_id=dev.dev_id, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff(attempt, 0.5, 30.0))
                attempt += 1

    async def _ticker(self, stop: asyncio.Event) -> None:
        cfg = self.config
        while not stop.is_set():
            await asyncio.sleep(cfg.status_interval)
            now = time.monotonic()
            for dev in self.devices.values():
                if dev.pattern is None and dev.drift:
                    dev.signal = max(0, min(31, dev.signal + self.rng.randint(-2, 2)))
                    dev.power = max(1, min(100, dev.power + self.rng.randint(-1, 1)))
                if cfg.offline_rate and now >= dev.offline_until \
                        and self.rng.random() < cfg.offline_rate:
                    dev.offline_until = now + cfg.offline_seconds
                    self.stats["offline"] += 1
            await self.report_all()

    async def _reader(self) -> None:
        assert self.client is not None
        async for message in self.client.messages:
            parts = message.topic.value.split("/")
            dev_id = parse_dev_id(parts[1]) if len(parts) == 3 else None
            dev = self.devices.get(dev_id) if dev_id else None
            if dev is not None and isinstance(message.payload, bytes | str):
                self._command(dev, message.payload)

    def _command(self, dev: SimDevice, raw: bytes | str) -> None:
        try:
            payload = json.loads(raw)
        except (ValueError, TypeError):
            return
        if not isinstance(payload, dict):
            return
        self.commands.append((dev.dev_id, payload))
        self.stats[f"cmd_{payload.get('op')}"] += 1
        self._spawn(self._handle(dev, payload))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, dev: SimDevice, cmd: dict[str, Any]) -> None:
        if time.monotonic() < dev.offline_until:
            return
        op = cmd.get("op")
        try:
            if op == "report":
                await self.report_status(dev)
            elif op == "cancel":
                dev.cancelled = True
            elif op == "upgrade" and dev.drop_commands > 0:
                dev.drop_commands -= 1           # lost on the way: it never knew
                self.stats["commands_lost"] += 1
            elif op == "upgrade" and not dev.busy:
                dev.busy, dev.cancelled = True, False
                try:
                    await self._upgrade(dev, cmd)
                finally:
                    dev.busy = False
        except (aiomqtt.MqttError, mqttlite.MqttLiteError) as exc:
            log.warning("fleet publish failed", dev_id=dev.dev_id, error=str(exc))

    async def _upgrade(self, dev: SimDevice, cmd: dict[str, Any]) -> None:
        cfg = self.config
        campaign = int(cmd.get("campaign", 0))
        attempt = cmd.get("attempt")
        dev.attempt = attempt if isinstance(attempt, str) else None   # echoed in progress
        dev.upgrades += 1
        await self.progress(dev, campaign, 0)
        ok = await self._download(dev, cmd, campaign)
        if not ok or dev.cancelled:
            return
        if cfg.download_failure_rate and self.rng.random() < cfg.download_failure_rate:
            await self.progress(dev, campaign, self.rng.randint(102, 107))
            return
        await self.progress(dev, campaign, 101)
        await asyncio.sleep(cfg.install_time)
        if dev.cancelled:
            return
        if dev.install_failures:
            await self.progress(dev, campaign, dev.install_failures.pop(0))
            return
        if cfg.install_failure_rate and self.rng.random() < cfg.install_failure_rate:
            await self.progress(dev, campaign, self.rng.randint(202, 206))
            return
        target = str(cmd.get("target"))
        if cmd.get("type") == "sota":
            dev.sota_version = target
        else:
            dev.fota_version = target
        await self.progress(dev, campaign, 201, target)
        await self.report_status(dev)
        self.stats["upgraded"] += 1

    async def _download(self, dev: SimDevice, cmd: dict[str, Any], campaign: int) -> bool:
        """Fetch the package; the time it takes follows its size and the bandwidth."""
        assert self.http is not None
        cfg = self.config
        size = int(cmd.get("size", 0))
        digest = hashlib.md5()
        got = 0
        started = time.monotonic()
        next_report = cfg.progress_every
        try:
            async with self.http.get(str(cmd.get("url"))) as resp:
                if resp.status != 200:
                    await self.progress(dev, campaign, 107)
                    return False
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    digest.update(chunk)
                    got += len(chunk)
                    pct = min(99, int(100 * got / size)) if size else 99
                    if pct >= next_report:
                        await self.progress(dev, campaign, pct)
                        next_report = pct + cfg.progress_every
                    wait = (got / cfg.bandwidth - (time.monotonic() - started)
                            if cfg.bandwidth else 0.0)       # 0: unlimited
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if dev.cancelled:
                        return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats["download_errors"] += 1
            log.info("download failed", dev_id=dev.dev_id, error=str(exc)[:100])
            await self.progress(dev, campaign, 104)
            return False
        if got != size:
            self.stats["size_mismatch"] += 1
            await self.progress(dev, campaign, 107)
            return False
        if cfg.verify_md5 and digest.hexdigest() != cmd.get("md5"):
            self.stats["md5_mismatch"] += 1
            await self.progress(dev, campaign, 205)
            return False
        return True


class BadMix(ValueError):
    pass


def parse_mix(specs: list[str]) -> list[tuple[str, str, str, float]]:
    """``MANUF/MODEL/VERSION=SHARE`` each (a manufacturer's name may hold commas, as
    OneNET's "Quectel Wireless Solutions Co., Ltd." does, so one a flag): the groups of a
    mixed fleet, shares relative to their sum."""
    out = []
    for spec in specs:
        body, eq, share = spec.rpartition("=")
        parts = body.split("/")
        if not eq or len(parts) != 3 or not all(p.strip() for p in parts):
            raise BadMix(f"--mix {spec!r}: expected MANUF/MODEL/VERSION=SHARE")
        try:
            weight = float(share)
        except ValueError:
            raise BadMix(f"--mix {spec!r}: the share {share!r} is not a number") from None
        if not weight > 0 or weight == float("inf"):
            raise BadMix(f"--mix {spec!r}: the share must be above 0")
        out.append((parts[0].strip(), parts[1].strip(), parts[2].strip(), weight))
    return out


def parse_patterns(spec: str) -> list[tuple[str, float]]:
    """``NAME=SHARE,...`` of ``PATTERNS``: a fleet's daily radio patterns, shares relative
    to their sum."""
    out = []
    for part in spec.split(","):
        name, eq, share = part.strip().partition("=")
        if name not in PATTERNS:
            raise BadMix(f"--patterns: {name!r} is not a pattern (one of "
                         f"{', '.join(PATTERNS)})")
        try:
            weight = float(share) if eq else 1.0
        except ValueError:
            raise BadMix(f"--patterns {part!r}: the share {share!r} is not a number") from None
        if not weight > 0 or weight == float("inf"):
            raise BadMix(f"--patterns {part!r}: the share must be above 0")
        out.append((name, weight))
    return out


def apportion(n: int, weights: list[float]) -> list[int]:
    """``n`` split by ``weights`` in whole numbers that add up to ``n`` (largest
    remainders)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i],
                    reverse=True)[:n - sum(counts)]:
        counts[i] += 1
    return counts


def make_devices(n: int, *, first_id: int = 1, seed: int | None = None,
                 manuf: str = "China Mobile", model: str = "M5310",
                 fota_version: str = "1.2", ids: list[int] | None = None,
                 mix: list[tuple[str, str, str, float]] | None = None,
                 patterns: list[tuple[str, float]] | None = None,
                 cells: int | None = None) -> list[SimDevice]:
    """``n`` devices from ``first_id`` (or exactly ``ids``), all of one module and version,
    or spread over ``mix`` (groups in proportion to their shares, interleaved by a seeded
    shuffle); with ``patterns``, daily radio patterns spread the same way; with ``cells``,
    each device in one of that many cells, at coverage level 0, 1 or 2 (70/25/5%)."""
    rng = random.Random(seed)
    dev_ids = list(ids if ids is not None else range(first_id, first_id + n))
    kinds = [(manuf, model, fota_version)] * len(dev_ids)
    if mix:
        counts = apportion(len(dev_ids), [w for *_, w in mix])
        kinds = [(m, mo, v) for (m, mo, v, _), c in zip(mix, counts, strict=True)
                 for _ in range(c)]
        rng.shuffle(kinds)
    out = [SimDevice(dev_id, k[0], k[1], k[2], "app-1",
                     signal=rng.randint(12, 31), power=rng.randint(40, 100))
           for dev_id, k in zip(dev_ids, kinds, strict=True)]
    if patterns:
        counts = apportion(len(out), [w for _, w in patterns])
        names = [name for (name, _), c in zip(patterns, counts, strict=True) for _ in range(c)]
        rng.shuffle(names)
        for dev, name in zip(out, names, strict=True):
            dev.pattern = name
    if cells:
        for dev in out:
            dev.cell = f"cell-{rng.randrange(cells)}"
            dev.ce_level = rng.choices((0, 1, 2), (70, 25, 5))[0]
    return out
