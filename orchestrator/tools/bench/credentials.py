"""``bench credentials``: broker accounts at fleet size. Provisioning every registered device
(the CLI's path: hashing in one process per core, COPY into PostgreSQL, the secrets written
to a 0600 file) beside ``mosquitto_passwd -U`` hashing the same number of lines (the
broker's own tool, the raw limit of making $7$ lines here); then a private Mosquitto on
the configuration ``broker init`` writes: its start and reload (SIGHUP) with every account,
its memory, how soon one more account connects with ``broker sync --watch`` running, and
the rate of authenticated connects beside anonymous ones on the same broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.accounts import Issued, mosquitto_conf
from orchestrator.sim import mqttlite
from orchestrator.store import devices
from orchestrator.store.db import connect
from orchestrator.tools.bench.common import Say, report, scratch_database
from orchestrator.tools.demo import free_port
from orchestrator.usecases import broker, credentials

RAW_SAMPLE = 20_000          # lines mosquitto_passwd hashes (its rate is per line)
CONNECTS = 2_000


def _exe(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise SystemExit(f"bench credentials needs {name} (apt install mosquitto)")
    return found


async def _mosquitto_passwd_rate(n: int) -> float:
    """Lines per second ``mosquitto_passwd -U`` turns from user:password into $7$ hashes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "passwd"
        await asyncio.to_thread(path.write_text,
                                "".join(f"{i}:secret-{i:012d}\n" for i in range(1, n + 1)))
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(_exe("mosquitto_passwd"), "-U", str(path))
        await proc.wait()
        return n / (time.perf_counter() - started)


async def _connect(port: int, dev_id: int | None, secret: str | None,
                   deadline: float = 30.0) -> float:
    """Seconds until the broker accepts this account (retrying refusals)."""
    started = time.perf_counter()
    while True:
        try:
            link = await mqttlite.connect("127.0.0.1", port, f"bench-{dev_id}", lambda *_: None,
                                          username=None if dev_id is None else str(dev_id),
                                          password=secret, clean=True, timeout=deadline)
            await link.close()
            return time.perf_counter() - started
        except (mqttlite.Refused, OSError):
            if time.perf_counter() - started > deadline:
                raise
            await asyncio.sleep(0.01)


async def _connect_rate(port: int, accounts: Sequence[tuple[int | None, str | None]]) -> float:
    sem = asyncio.Semaphore(64)

    async def one(dev_id: int | None, secret: str | None) -> None:
        async with sem:
            await _connect(port, dev_id, secret)

    started = time.perf_counter()
    await asyncio.gather(*(one(d, s) for d, s in accounts))
    return len(accounts) / (time.perf_counter() - started)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench_credentials(settings: Settings, say: Say, n: int = 1_000_000
                            ) -> dict[str, Any]:
    say(f"credentials: {n:,} device accounts, provisioned, loaded into Mosquitto, connecting")
    mosquitto = _exe("mosquitto")
    sample: dict[int, str] = {}
    async with scratch_database(settings) as dsn:
        conn = await connect(dsn)
        try:
            await devices.seed(conn, n)
            await conn.execute("VACUUM ANALYZE ota.devices")
            with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
                secrets_file = Path(tmp) / "fleet.csv"
                out = await asyncio.to_thread(os.open, secrets_file,
                                              os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

                def keep(issued: Sequence[Issued]) -> None:
                    os.write(out, "".join(f"{i.dev_id},{i.username},{i.secret}\n"
                                          for i in issued).encode())
                    for i in issued:
                        if i.dev_id is not None and (len(sample) < CONNECTS or i.dev_id == n):
                            sample[i.dev_id] = i.secret

                started = time.perf_counter()
                outcome = await credentials.provision(
                    conn, credentials.Selection(all_registered=True), rotate=False, sink=keep,
                    progress=lambda d: say(f"  ... {d:,} accounts") if d % 200_000 == 0
                    else None)
                provision_s = time.perf_counter() - started
                os.close(out)
                assert outcome.created == n, outcome
                rate = n / provision_s
                say(f"  provisioned {n:,} accounts in {provision_s:.1f} s ({rate:,.0f}/s)")
                raw = await _mosquitto_passwd_rate(min(n, RAW_SAMPLE))
                say(f"  mosquitto_passwd -U: {raw:,.0f} lines/s (one process)")

                directory = Path(tmp) / "broker"
                await broker.service_account(conn, "orchestrator", rotate=True)
                synced = await broker.write_files(conn, directory, "ota")
                say(f"  broker files written in {synced.seconds:.2f} s "
                    f"({(directory / 'devices.passwd').stat().st_size / 1e6:.0f} MB)")
                dport, oport, open_port = free_port(), free_port(), free_port()
                conf = directory / "mosquitto.conf"
                conf.write_text(
                    mosquitto_conf(str(directory), devices_port=dport, orchestrator_port=oport,
                                   bind="127.0.0.1", run_as="root" if os.geteuid() == 0
                                   else None)
                    + f"\n# the same broker without authentication, for the connect ratio\n"
                      f"listener {open_port} 127.0.0.1\nallow_anonymous true\n")
                started = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    mosquitto, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL)
                try:
                    last = max(sample)
                    load_s = await _connect(dport, last, sample[last], deadline=120)
                    rss = _rss_mb(proc.pid)
                    say(f"  Mosquitto started with {n:,} accounts in {load_s:.2f} s, "
                        f"RSS {rss:.0f} MB")
                    started = time.perf_counter()
                    proc.send_signal(signal.SIGHUP)
                    await asyncio.sleep(0.01)
                    reload_s = await _connect(dport, last, sample[last], deadline=120) + 0.01
                    say(f"  reload (SIGHUP) with {n:,} accounts: {reload_s:.2f} s")

                    stop, first = asyncio.Event(), asyncio.Event()
                    writes: list[float] = []

                    def reload(synced: broker.Synced) -> None:
                        broker.reload(pid=proc.pid)
                        writes.append(synced.seconds)
                        first.set()

                    watcher = asyncio.create_task(broker.watch(
                        dsn, directory, "ota", reload, stop))
                    await first.wait()                        # its first full write
                    await _connect(dport, last, sample[last], deadline=120)   # reloaded
                    await conn.execute("INSERT INTO ota.devices (dev_id) VALUES ($1)", n + 1)
                    one: dict[int, str] = {}
                    started = time.perf_counter()
                    await credentials.provision(
                        conn, credentials.Selection(dev_ids=(n + 1,)), rotate=False,
                        sink=lambda issued: one.update({n + 1: issued[0].secret}))
                    await _connect(dport, n + 1, one[n + 1], deadline=60)
                    usable_s = time.perf_counter() - started
                    write_s = writes[-1]
                    say(f"  one more account, created with {n:,} present: connects after "
                        f"{usable_s:.2f} s (broker sync --watch: {write_s:.2f} s to write the "
                        "file, the rest Mosquitto's reload)")
                    stop.set()
                    await watcher

                    accounts = [(d, s) for d, s in sorted(sample.items())[:CONNECTS]]
                    auth_rate = await _connect_rate(dport, accounts)
                    open_rate = await _connect_rate(open_port, [(None, None)] * len(accounts))
                    say(f"  connects: {auth_rate:,.0f}/s authenticated, {open_rate:,.0f}/s "
                        "anonymous (same broker)")
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    await proc.wait()
        finally:
            await conn.close()
    return report("credentials", "accounts/s", rate, raw, {
        "accounts": n, "provision_seconds": round(provision_s, 1),
        "broker_start_seconds": round(load_s, 2), "broker_reload_seconds": round(reload_s, 2),
        "broker_rss_mb": round(rss), "new_account_usable_seconds": round(usable_s, 2),
        "new_account_file_write_seconds": round(write_s, 2),
        "connects_per_s_authenticated": round(auth_rate), "connects_per_s_anonymous":
        round(open_rate), "connect_ratio": round(auth_rate / open_rate, 3)}, say)
