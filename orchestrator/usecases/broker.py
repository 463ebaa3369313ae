"""The broker's side of the accounts: the orchestrator's own accounts, and Mosquitto's
password and ACL files written from PostgreSQL (atomically: a broker never reads half a
file), then a reload (SIGHUP, which Mosquitto answers by reading them again).

Files are written 0640; when a ``mosquitto`` group exists (Debian's package, the official
image) they belong to it, so a broker that dropped to its own user can read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from orchestrator.domain.accounts import (
    DEVICE,
    ORCHESTRATOR,
    AccountsInputError,
    Issued,
    device_acl,
    issue,
    orchestrator_acl,
)
from orchestrator.store import accounts
from orchestrator.store.db import Connection, connect

log = structlog.get_logger(__name__)
CHANNEL = "ota_mqtt_accounts"


async def service_account(conn: Connection, username: str, *, rotate: bool,
                          secret: str | None = None) -> Issued:
    """Create (or with ``rotate`` renew) an orchestrator account; its secret (made here
    unless given) is returned once."""
    if username.isdigit():
        raise AccountsInputError(f"--user {username!r}: an all-digit name is a device's")
    issued = issue(username, secret=secret)
    async with conn.transaction():
        if await accounts.service_exists(conn, username) and not rotate:
            raise AccountsInputError(f"account {username!r} exists (--force gives it a new "
                                     "secret; replicas using the old one are refused)")
        await accounts.stage(conn)
        await accounts.add_to_stage(conn, [issued], ORCHESTRATOR)
        await accounts.save_stage(conn)
    return issued


def _group() -> int | None:
    try:
        return grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return None


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (a temporary file beside it, then rename), 0640. Not
    fsynced: the files are derived from PostgreSQL and written again at the next sync."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o640)
        gid = _group()
        if gid is not None and os.geteuid() == 0:
            os.fchown(fd, -1, gid)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    finally:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@dataclass(frozen=True, slots=True)
class Synced:
    devices: int
    orchestrators: int
    seconds: float
    changed: int = 0          # accounts read for this write (every one after a full read)


def _by_user(data: bytes) -> dict[bytes, bytes]:
    return {line.partition(b":")[0]: line for line in data.splitlines()}


class BrokerFiles:
    """The four files of ``directory``, kept in memory between writes so that a change of a
    few accounts among a million is read (by change number) and written without reading
    every account again."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.devices: dict[bytes, bytes] = {}
        self.orchestrators: dict[bytes, bytes] = {}
        self._blob = b""          # devices.passwd as last written

    async def full(self, conn: Connection) -> Synced:
        """Every account read again, every file written."""
        started = time.perf_counter()
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        self.devices = _by_user(await accounts.lines(conn, DEVICE))
        self.orchestrators = _by_user(await accounts.lines(conn, ORCHESTRATOR))
        await self._write(devices=True, orchestrators=True, rebuild=True)
        return Synced(len(self.devices), len(self.orchestrators),
                      time.perf_counter() - started, len(self.devices) + len(self.orchestrators))

    async def apply(self, conn: Connection, lo: int, hi: int) -> Synced:
        """The accounts of change numbers ``lo``..``hi`` (one notification's), as they are
        now; only the files they touch are written."""
        started = time.perf_counter()
        rows = await accounts.changed(conn, lo, hi)
        touched = set()
        added: list[bytes] = []        # new device accounts: appended, the rest kept as is
        rebuild = False
        for r in rows:
            table = self.devices if r["role"] == DEVICE else self.orchestrators
            user = r["username"].encode()
            if r["revoked"]:
                rebuild |= table.pop(user, None) is not None and table is self.devices
            else:
                line = r["line"].encode()
                if table is self.devices:
                    if user in table:
                        rebuild = True
                    else:
                        added.append(line)
                table[user] = line
            touched.add(r["role"])
        if DEVICE in touched and not rebuild:
            self._blob += b"".join(x + b"\n" for x in added)
        await self._write(devices=DEVICE in touched, orchestrators=ORCHESTRATOR in touched,
                          rebuild=rebuild)
        return Synced(len(self.devices), len(self.orchestrators),
                      time.perf_counter() - started, len(rows))

    async def _write(self, *, devices: bool, orchestrators: bool, rebuild: bool) -> None:
        d = self.directory
        if devices:
            if rebuild:
                self._blob = _lines(self.devices)
            await asyncio.to_thread(_replace, d / "devices.passwd", self._blob)
            await asyncio.to_thread(_replace, d / "devices.acl", device_acl(self.prefix).encode())
        if orchestrators:
            users = sorted(u.decode() for u in self.orchestrators)
            await asyncio.to_thread(_replace, d / "orchestrators.passwd",
                                    _lines(self.orchestrators))
            await asyncio.to_thread(_replace, d / "orchestrators.acl",
                                    orchestrator_acl(self.prefix, users).encode())


def _lines(table: dict[bytes, bytes]) -> bytes:
    return b"\n".join(table.values()) + b"\n" if table else b""


async def write_files(conn: Connection, directory: Path, prefix: str) -> Synced:
    """The four files from the accounts table, each replaced atomically."""
    return await BrokerFiles(directory, prefix).full(conn)


class ReloadError(RuntimeError):
    pass


def reload(pid_file: Path | None = None, pid: int | None = None) -> int | None:
    """SIGHUP the broker (its pid, or the pid in its ``pid_file``); the pid signalled."""
    if pid is None and pid_file is not None:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise ReloadError(f"--pid-file {pid_file}: no pid in it ({exc})") from None
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"broker pid {pid}: no such process") from None
    except PermissionError:
        raise ReloadError(f"broker pid {pid}: not allowed to signal it (run as its user "
                          "or root)") from None
    return pid


async def watch(dsn: str, directory: Path, prefix: str,
                on_change: Callable[[Synced], None], stop: asyncio.Event, *,
                full_every: float = 600.0, retry: float = 5.0) -> None:
    """Write the files at start and whenever accounts change: each notification's accounts
    alone (LISTEN/NOTIFY), everything again after a deletion, a lost connection, or
    ``full_every`` seconds. ``on_change`` reloads the broker."""
    files = BrokerFiles(directory, prefix)
    queue: asyncio.Queue[str] = asyncio.Queue()

    def notified(_c: object, _pid: int, _channel: str, payload: str) -> None:
        queue.put_nowait(payload)

    while not stop.is_set():
        conn: Connection | None = None
        try:
            conn = await connect(dsn)
            while not queue.empty():      # a new connection reads everything anyway
                queue.get_nowait()
            await conn.add_listener(CHANNEL, notified)
            on_change(await files.full(conn))
            last_full = time.monotonic()
            while not stop.is_set():
                payloads = await _next(queue, stop, full_every - (time.monotonic() - last_full))
                if stop.is_set():
                    break
                ranges = [p.split(":") for p in payloads if p != "full"]
                if "full" in payloads or not payloads:
                    on_change(await files.full(conn))
                    last_full = time.monotonic()
                    continue
                lo = min(int(r[0]) for r in ranges)
                hi = max(int(r[1]) for r in ranges)
                on_change(await files.apply(conn, lo, hi))
        except (OSError, TimeoutError) as exc:
            log.warning("broker sync: database unavailable", error=str(exc)[:200])
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "asyncpg":
                raise
            log.warning("broker sync: database error", error=str(exc)[:200])
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), retry)


async def _next(queue: asyncio.Queue[str], stop: asyncio.Event, timeout: float) -> list[str]:
    """The next notifications (all that are waiting); none when ``timeout`` passed."""
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({getter, stopper}, timeout=max(timeout, 0.0),
                       return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not getter.done():
        getter.cancel()
        return []
    out = [getter.result()]
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
