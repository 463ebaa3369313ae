"""Publishing the command outbox. Commands are written in the transaction that records the
decision, leased to the scheduler that decided them (which publishes them at once); the
drain leases what is left in a short transaction of its own. Both publish with no
transaction open and delete them once the broker acknowledged them.

So a device can never report progress for a command the database does not know of yet, a
crash after the commit leaves the command for any replica to publish (at-least-once: a lease
ends by itself), ``SKIP LOCKED`` keeps two publishers off the same row, and a slow or absent
broker holds no row lock and no pool connection."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.ports import CommandPublisher, Database, PublishFailed

LEASE = 60.0     # longer than a publish may take (the publisher gives up after 30 s)


async def publish(db: Database, publisher: CommandPublisher,
                  rows: Sequence[tuple[int, int, str]]) -> int:
    """Publish these commands, leased to us ((id, dev_id, payload), from ``enqueue`` or
    ``lease_outbox``), and delete them once the broker took them. Raises PublishFailed,
    leaving them queued for any publisher, when it does not."""
    if not rows:
        return 0
    ids = [r[0] for r in rows]
    try:
        await publisher.publish_many([(dev_id, payload) for _, dev_id, payload in rows])
    except PublishFailed:
        async with db.transaction() as tx:
            await tx.release_outbox(ids)
        raise
    async with db.transaction() as tx:
        await tx.delete_outbox(ids)
    return len(rows)


async def drain(db: Database, publisher: CommandPublisher, batch: int = 500) -> int:
    """Publish whatever is queued (cancels, and commands a crashed replica left)."""
    sent = 0
    while True:
        async with db.transaction() as tx:
            rows = await tx.lease_outbox(batch, LEASE)
        if not rows:
            return sent
        sent += await publish(db, publisher, rows)
