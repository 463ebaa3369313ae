"""Publishing the command outbox. Commands are written in the transaction that records the
decision and published right after it commits; a row leaves the outbox only in the
transaction that saw the broker acknowledge it.

So a device can never report progress for a command the database does not know of yet, a
crash after the commit leaves the command for any replica to publish (at-least-once), and
``FOR UPDATE SKIP LOCKED`` keeps two publishers off the same row."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.ports import CommandPublisher, Database


async def send(db: Database, publisher: CommandPublisher, ids: Sequence[int]) -> int:
    """Publish these queued commands now (those another publisher holds are skipped).
    Raises PublishFailed, leaving them queued, when the broker does not take them."""
    if not ids:
        return 0
    async with db.transaction() as tx:
        rows = await tx.take_outbox(ids, len(ids))
        await publisher.publish_many(rows)
        return len(rows)


async def drain(db: Database, publisher: CommandPublisher, batch: int = 500) -> int:
    """Publish whatever is queued (cancels, and commands a crashed replica left)."""
    sent = 0
    while True:
        async with db.transaction() as tx:
            rows = await tx.take_outbox(None, batch)
            if not rows:
                return sent
            await publisher.publish_many(rows)
            sent += len(rows)
