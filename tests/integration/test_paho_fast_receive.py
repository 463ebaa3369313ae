"""The ingest's receive fast path (mqtt/_paho.fast_receive) yields the messages paho's own
decoding yields: QoS 1 without properties through the fast path, everything else through
paho, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import MQTT_URL
from orchestrator.config import parse_mqtt_url
from orchestrator.mqtt import _paho
from orchestrator.mqtt.connection import make_client
from stack import until


async def test_fast_receive_yields_what_paho_yields() -> None:
    url = parse_mqtt_url(MQTT_URL)
    topic = f"fast{uuid.uuid4().hex[:8]}/7/status"
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    props.ContentType = "application/json"
    sent = [(b'{"signal": 1}', 1, None), (b'{"signal": 2}', 0, None),
            (b'{"signal": 3}', 1, props), (b"", 1, None), ("é".encode() * 3, 1, None)]
    for v5 in (True, False):
        got: list[_paho.Received] = []
        plain: list[Any] = []
        async with make_client(url, f"fast-{uuid.uuid4().hex[:8]}", v5=v5) as sub, \
                make_client(url, f"plain-{uuid.uuid4().hex[:8]}", v5=v5) as ref, \
                make_client(url, f"pub-{uuid.uuid4().hex[:8]}") as pub:
            _paho.manual_acks(sub)
            _paho.fast_receive(sub, got.append)
            _paho.paho_of(ref).on_message = lambda _c, _u, m, into=plain: into.append(m)
            await sub.subscribe(topic, qos=1)
            await ref.subscribe(topic, qos=1)
            for payload, qos, p in sent:
                await pub.publish(topic, payload, qos=qos, properties=p)
            await until(functools.partial(arrived, got, plain, n=len(sent)), 10)
            # paho's own decoding, message for message (ids are per connection)
            assert [(m.topic, m.payload, m.qos) for m in got] == [
                (m.topic, m.payload, m.qos) for m in plain], v5
            assert [m.payload for m in got] == [s[0] for s in sent]
            assert [m.qos for m in got] == [1, 0, 1, 1, 1]
            assert all(m.mid > 0 for m in got if m.qos == 1)


async def arrived(*lists: list[Any], n: int) -> bool:
    return all(len(x) >= n for x in lists)


async def redelivered(topic: str, client_id: str, acknowledge: int, v5: bool) -> int:
    """Publish 20 QoS 1 messages to a persistent session (Mosquitto's default in-flight
    limit for MQTT 3.1.1), acknowledge the first ``acknowledge`` of them with
    ``ack_all``, reconnect: how many come again."""
    url = parse_mqtt_url(MQTT_URL)
    got: list[_paho.Received] = []
    sub = make_client(url, client_id, persistent=True, v5=v5, session_expiry=30)
    _paho.manual_acks(sub)
    _paho.fast_receive(sub, got.append)
    async with sub, make_client(url, f"pub-{client_id}") as pub:
        await sub.subscribe(topic, qos=1)
        await asyncio.gather(*(pub.publish(topic, f"{i}", qos=1) for i in range(20)))
        await until(functools.partial(arrived, got, n=20), 10)
        _paho.ack_all(sub, got[:acknowledge])
        await asyncio.sleep(0.3)
    again: list[_paho.Received] = []
    sub = make_client(url, client_id, persistent=True, v5=v5, session_expiry=0)
    _paho.manual_acks(sub)
    _paho.fast_receive(sub, again.append)
    async with sub:
        await asyncio.sleep(0.5)
        _paho.ack_all(sub, again)
    return len(again)


async def test_ack_all_acknowledges_each_message_in_one_write() -> None:
    for v5 in (True, False):
        topic = f"ackall{uuid.uuid4().hex[:8]}/7/status"
        assert await redelivered(topic, f"ackall-{uuid.uuid4().hex[:8]}", 20, v5) == 0
        assert await redelivered(topic, f"ackall-{uuid.uuid4().hex[:8]}", 15, v5) == 5


async def test_direct_publish_delivers_a_batch_and_counts_its_acks() -> None:
    url = parse_mqtt_url(MQTT_URL)
    topic = f"direct{uuid.uuid4().hex[:8]}/1/command"
    got: list[Any] = []
    async with make_client(url, f"sub-{uuid.uuid4().hex[:8]}", v5=False) as sub, \
            make_client(url, f"direct-{uuid.uuid4().hex[:8]}", v5=False) as pub:
        _paho.paho_of(sub).on_message = lambda _c, _u, m: got.append(m)
        await sub.subscribe(topic, qos=1)
        direct = _paho.DirectPublish(pub)
        # sizes across the one- and two-byte Remaining Length
        messages = [(topic, f"{i}".encode() * (i % 50)) for i in range(300)]
        batch = direct.publish(messages)
        second = direct.publish(messages[:10])
        async with asyncio.timeout(10):
            await batch.done.wait()
            await second.done.wait()
        assert not direct.waiting
        assert direct.publish([]).done.is_set()
        await until(functools.partial(arrived, got, n=310), 10)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (t, p, 1) for t, p in messages + messages[:10]]
    with pytest.raises(aiomqtt.MqttError, match="not connected"):
        direct.publish(messages[:1])


async def test_malformed_publish_packets_fail_as_paho_fails_them() -> None:
    """A short or inconsistent PUBLISH is refused by the fast path exactly as by paho (the
    connection's reader handles MalformedPacket), never an IndexError of ours; what paho
    accepts, the fast path delivers the same."""
    url = parse_mqtt_url(MQTT_URL)
    fast = make_client(url, "malformed-fast")
    plain = make_client(url, "malformed-plain")
    got: list[_paho.Received] = []
    ref: list[Any] = []
    _paho.fast_receive(fast, got.append)
    _paho.paho_of(plain).on_message = lambda _c, _u, m: ref.append(m)
    for header, packet in ((0x32, b"\x00\x05ab"), (0x32, b"\x00"), (0x32, b""),
                           (0x32, b"\x00\x01a\x00"), (0x32, b"\x00\x00\x00\x07\x00{}"),
                           (0x32, b"\x00\x01a\x00\x07\x05\x01")):
        outcomes = []
        for client in (fast, plain):
            paho = _paho.paho_of(client)
            paho._in_packet = {"command": header, "packet": packet}
            try:
                paho._handle_publish()
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[0] == outcomes[1], (packet, outcomes)
        assert outcomes[0] in ("ok", "MalformedPacket"), (packet, outcomes)
    assert [(m.topic, m.payload, m.qos, m.mid) for m in got] == [
        (m._topic.decode(), m.payload, m.qos, m.mid) for m in ref]
    assert got, "some of these packets are well-formed"


async def test_pubacks_are_taken_from_the_buffer_until_one_is_not_ours() -> None:
    """The PUBACK fast path consumes whole PUBACKs its taker accepts and stops at anything
    else (a foreign id, another packet type, a PUBACK cut by the read), leaving it to paho."""
    client = make_client(parse_mqtt_url(MQTT_URL), f"pubacks-{uuid.uuid4().hex[:8]}",
                         v5=False)
    reads = _paho.Reads(client)
    ours = {1, 2, 300, 7}
    taken: list[int] = []

    def take(mid: int) -> bool:
        if mid in ours:
            taken.append(mid)
            return True
        return False

    def puback(mid: int) -> bytes:
        return bytes([0x40, 2]) + mid.to_bytes(2, "big")

    cases = [
        (puback(1) + puback(300) + puback(9) + puback(2), 2, [1, 300]),   # 9 is foreign
        (puback(7) + bytes([0xD0, 0]), 1, [7]),                       # then a PINGRESP
        (puback(2) + puback(1)[:3], 1, [2]),                          # a cut PUBACK
        (bytes([0x30, 0x05]) + puback(1), 0, []),                     # a PUBLISH first
        (b"", 0, []),
    ]
    for data, consumed, mids in cases:
        taken.clear()
        reads._buf, reads._pos = data, 0
        assert reads._pubacks(take) == consumed, data
        assert reads._pos == 4 * consumed and taken == mids, data


async def test_direct_publish_counts_thousands_of_acks_exactly() -> None:
    """Acknowledgements arrive many to a read and take the buffer fast path: a batch of
    5,000 completes, with nothing left waiting."""
    url = parse_mqtt_url(MQTT_URL)
    topic = f"many{uuid.uuid4().hex[:8]}/1/command"
    async with make_client(url, f"many-{uuid.uuid4().hex[:8]}", v5=False) as pub:
        direct = _paho.DirectPublish(pub)
        batches = [direct.publish([(topic, b"{}")] * 2500) for _ in range(2)]
        async with asyncio.timeout(20):
            for batch in batches:
                await batch.done.wait()
        assert not direct.waiting and [b.remaining for b in batches] == [0, 0]
