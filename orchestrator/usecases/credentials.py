"""Device broker accounts in bulk: create, rotate, revoke. The CLI and the API call these.

Everything happens in one transaction: a bad id, a device that already has an account
(without ``rotate``) or any failure leaves nothing written. The secrets are handed to
``sink`` chunk by chunk inside that transaction, so a caller writes them somewhere safe
(a 0600 file) and shows them only once the transaction committed.

Hashing is the cost (60 us an account): above a few thousand accounts it runs in one
process per core while this process copies the hashes into PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.domain.accounts import DEVICE, AccountsInputError, Issued, issue_devices
from orchestrator.store import accounts, devices
from orchestrator.store.db import Connection

CHUNK = 10_000
PARALLEL_ABOVE = 4_000
Sink = Callable[[Sequence[Issued]], Awaitable[None] | None]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which devices: these ids, or every registered device (optionally of one
    manufacturer and model)."""

    dev_ids: tuple[int, ...] | None = None
    all_registered: bool = False
    manuf: str | None = None
    model: str | None = None

    def check(self) -> None:
        if (self.dev_ids is None) == (not self.all_registered):
            raise AccountsInputError("devices: give ids (or a file of them) or "
                                     "--all-registered, one of the two")
        if self.dev_ids is not None and not self.dev_ids:
            raise AccountsInputError("devices: the list is empty")
        if (self.manuf or self.model) and not self.all_registered:
            raise AccountsInputError("--manuf/--model select among all registered devices: "
                                     "use them with --all-registered")


@dataclass(frozen=True, slots=True)
class Outcome:
    created: int
    rotated: int


def _shown(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")


async def _check_listed(conn: Connection, ids: Sequence[int], rotate: bool) -> None:
    absent = await devices.missing(conn, ids)
    if absent:
        raise AccountsInputError(f"devices: {len(absent)} not in the registry: "
                                 f"{_shown(absent)}")
    if not rotate:
        have = sorted(await accounts.active(conn, ids))
        if have:
            raise AccountsInputError(
                f"devices: {len(have)} already have an account: {_shown(have)} (--rotate "
                "gives them new secrets; the old ones stop working)")


@contextmanager
def _hasher(total_hint: int) -> Iterator[ProcessPoolExecutor | None]:
    if total_hint < PARALLEL_ABOVE or (os.cpu_count() or 1) < 2:
        yield None
        return
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        yield pool


async def provision(conn: Connection, sel: Selection, *, rotate: bool, sink: Sink,
                    progress: Progress | None = None) -> Outcome:
    """Issue accounts for the selected devices (new ones; with ``rotate`` also new secrets
    for those that have one) in one transaction; each chunk of secrets goes to ``sink``."""
    sel.check()
    loop = asyncio.get_running_loop()
    done = 0
    async with conn.transaction():
        if sel.dev_ids is not None:
            await _check_listed(conn, sel.dev_ids, rotate)
            hint = len(sel.dev_ids)
        else:
            hint = PARALLEL_ABOVE
        await accounts.stage(conn)
        with _hasher(hint) as pool:
            async def hashed(ids: list[int]) -> list[Issued]:
                if pool is None:
                    return issue_devices(ids)
                parts = [ids[i:i + 2_500] for i in range(0, len(ids), 2_500)]
                results = await asyncio.gather(*(loop.run_in_executor(pool, issue_devices, p)
                                                 for p in parts))
                return [x for r in results for x in r]

            pending: asyncio.Future[list[Issued]] | None = None
            async for ids in _pages(conn, sel, rotate):
                nxt = asyncio.ensure_future(hashed(ids))
                if pending is not None:
                    done += await _store(conn, await pending, sink)
                    if progress:
                        progress(done)
                pending = nxt
            if pending is not None:
                done += await _store(conn, await pending, sink)
                if progress:
                    progress(done)
        if done == 0:
            raise AccountsInputError("devices: none selected" + (
                "" if rotate else " without an account (--rotate renews existing ones)"))
        created, rotated = await accounts.save_stage(conn)
    return Outcome(created, rotated)


async def _pages(conn: Connection, sel: Selection, rotate: bool) -> AsyncIterator[list[int]]:
    if sel.dev_ids is not None:
        ids = list(sel.dev_ids)
        for i in range(0, len(ids), CHUNK):
            yield ids[i:i + CHUNK]
        return
    after = 0
    while True:
        page = await accounts.registered(conn, after, CHUNK, manuf=sel.manuf,
                                         model=sel.model, with_account=rotate)
        if not page:
            return
        yield page
        after = page[-1]


async def _store(conn: Connection, issued: list[Issued], sink: Sink) -> int:
    await accounts.add_to_stage(conn, issued, DEVICE)
    result = sink(issued)
    if result is not None:
        await result
    return len(issued)


@dataclass(frozen=True, slots=True)
class Revoked:
    revoked: list[int]
    without_account: int


async def revoke(conn: Connection, dev_ids: Sequence[int]) -> Revoked:
    """Revoke these devices' accounts (the broker refuses them once its files are synced;
    EMQX at once). Ids not in the registry are an error, nothing revoked."""
    if not dev_ids:
        raise AccountsInputError("devices: the list is empty")
    async with conn.transaction():
        absent = await devices.missing(conn, dev_ids)
        if absent:
            raise AccountsInputError(f"devices: {len(absent)} not in the registry: "
                                     f"{_shown(absent)}")
        done = await accounts.revoke(conn, dev_ids)
    return Revoked(done, len(dev_ids) - len(done))
