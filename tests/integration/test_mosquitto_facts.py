"""What Mosquitto does with persistent sessions and shared subscriptions, measured on the
broker this project ships against: the README's guarantees rest on these facts, so they are
tests (a broker that behaves otherwise fails here first)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import Mosquitto


def client(port: int, cid: str, expiry: int = 60) -> aiomqtt.Client:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry
    return aiomqtt.Client("127.0.0.1", port, identifier=cid, clean_start=False,
                          protocol=aiomqtt.ProtocolVersion.V5, properties=props)


async def publish(port: int, topic: str, n: int, start: int = 0) -> None:
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=200) as c:
        c.pending_calls_threshold = 100_000
        await asyncio.gather(*(c.publish(f"{topic}/{i}", str(i), qos=1)
                               for i in range(start, start + n)))


async def collect(port: int, cid: str, filt: str, seconds: float,
                  expiry: int = 60) -> set[bytes]:
    got: set[bytes] = set()
    async with client(port, cid, expiry) as c:
        await c.subscribe(filt, qos=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(seconds):
                async for m in c.messages:
                    got.add(bytes(m.payload))  # type: ignore[arg-type]
    return got


@pytest.fixture
async def broker(private_broker: Mosquitto) -> AsyncIterator[Mosquitto]:
    yield private_broker


async def test_shared_subscription_is_not_restored_after_a_broker_restart(
        broker: Mosquitto) -> None:
    for filt, expected in (("a/#", 50), ("$share/g/b/#", 0)):
        topic = filt.split("/")[-2]
        await collect(broker.port, f"s-{topic}", filt, 0.2)   # a persistent session, offline
        broker.stop()
        broker.start()
        await publish(broker.port, topic, 50)                 # before it reconnects
        got = await collect(broker.port, f"s-{topic}", filt, 1.0)
        assert len(got) == expected, (filt, len(got))


async def test_shared_member_offline_holds_its_share_and_one_that_ended_holds_none(
        broker: Mosquitto) -> None:
    # an offline member that kept its session: its share waits for it
    await collect(broker.port, "kept", "$share/g/k/#", 0.2)
    online = asyncio.create_task(collect(broker.port, "live", "$share/g/k/#", 2.0))
    await asyncio.sleep(0.4)
    await publish(broker.port, "k", 200)
    assert len(await online) < 200
    # a member whose session ended at disconnect (expiry 0): the others get everything
    await collect(broker.port, "ended", "$share/g/e/#", 0.2, expiry=0)
    online = asyncio.create_task(collect(broker.port, "live2", "$share/g/e/#", 2.0))
    await asyncio.sleep(0.4)
    await publish(broker.port, "e", 200)
    assert len(await online) == 200
