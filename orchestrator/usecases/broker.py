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
from orchestrator.store.db import Connection

log = structlog.get_logger(__name__)
CHANNEL = "ota_mqtt_accounts"


async def service_account(conn: Connection, username: str, *, rotate: bool) -> Issued:
    """Create (or with ``rotate`` renew) an orchestrator account; its secret is returned
    once."""
    if username.isdigit():
        raise AccountsInputError(f"--user {username!r}: an all-digit name is a device's")
    issued = issue(username)
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


def _replace(path: Path, data: bytes | None, write: Callable[[int], None] | None = None
             ) -> None:
    """Write ``path`` atomically (a temporary file beside it, then rename), 0640."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if data is not None:
            os.write(fd, data)
        if write is not None:
            write(fd)
        os.fchmod(fd, 0o640)
        gid = _group()
        if gid is not None and os.geteuid() == 0:
            os.fchown(fd, -1, gid)
        os.fsync(fd)
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
    change: int


async def write_files(conn: Connection, directory: Path, prefix: str) -> Synced:
    """The four files from the accounts table, each replaced atomically."""
    started = time.perf_counter()
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    change = await accounts.last_change(conn)
    counts: dict[str, int] = {}
    users: list[str] = []
    for role, name in ((DEVICE, "devices.passwd"), (ORCHESTRATOR, "orchestrators.passwd")):
        data = await accounts.lines(conn, role)
        counts[role] = data.count(b"\n")
        if role == ORCHESTRATOR:
            users = [line.split(b":", 1)[0].decode() for line in data.splitlines()]
        await asyncio.to_thread(_replace, directory / name, data)
    _replace(directory / "devices.acl", device_acl(prefix).encode())
    _replace(directory / "orchestrators.acl", orchestrator_acl(prefix, users).encode())
    return Synced(counts[DEVICE], counts[ORCHESTRATOR], time.perf_counter() - started, change)


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


async def watch(connect: Callable[[], object], directory: Path, prefix: str,
                on_change: Callable[[Synced], None], stop: asyncio.Event, *,
                min_gap: float = 1.0, poll: float = 60.0) -> None:
    """Write the files whenever the accounts change (LISTEN/NOTIFY, and every ``poll``
    seconds in case a notification was missed), at most once every ``min_gap`` seconds."""
    conn: Connection = await connect()  # type: ignore[misc]
    changed = asyncio.Event()

    def notified(*_: object) -> None:
        changed.set()

    try:
        await conn.add_listener(CHANNEL, notified)
        last = -1
        while not stop.is_set():
            current = await accounts.last_change(conn)
            due = changed.is_set() or current != last
            changed.clear()
            if due:
                synced = await write_files(conn, directory, prefix)
                last = synced.change
                on_change(synced)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min_gap)
            waiter = asyncio.ensure_future(changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=poll,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
    finally:
        await conn.close()
