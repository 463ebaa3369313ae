"""The ingest's receive fast path (mqtt/_paho.fast_receive) yields the messages paho's own
decoding yields: QoS 1 without properties through the fast path, everything else through
paho, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import uuid

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import MQTT_URL
from orchestrator.config import parse_mqtt_url
from orchestrator.mqtt import _paho
from orchestrator.mqtt.connection import make_client


async def test_fast_receive_yields_what_paho_yields() -> None:
    url = parse_mqtt_url(MQTT_URL)
    topic = f"fast{uuid.uuid4().hex[:8]}/7/status"
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    props.ContentType = "application/json"
    sent = [(b'{"signal": 1}', 1, None), (b'{"signal": 2}', 0, None),
            (b'{"signal": 3}', 1, props), (b"", 1, None), ("é".encode() * 3, 1, None)]
    async with make_client(url, f"fast-{uuid.uuid4().hex[:8]}") as sub, \
            make_client(url, f"pub-{uuid.uuid4().hex[:8]}") as pub:
        _paho.fast_receive(sub)
        _paho.manual_acks(sub)
        await sub.subscribe(topic, qos=1)
        for payload, qos, p in sent:
            await pub.publish(topic, payload, qos=qos, properties=p)
        got = []
        async with asyncio.timeout(10):
            async for m in sub.messages:
                got.append(m)
                _paho.ack(sub, m)
                if len(got) == len(sent):
                    break
    assert [bytes(m.payload) for m in got] == [s[0] for s in sent]  # type: ignore[arg-type]
    assert [m.qos for m in got] == [1, 0, 1, 1, 1]
    assert all(m.topic.value == topic for m in got)
    assert all(m.mid > 0 for m in got if m.qos == 1)
    with_props = got[2].properties
    assert with_props is not None and with_props.ContentType == "application/json"
    assert with_props.UserProperty == [("k", "v")]
    assert not hasattr(got[0].properties, "ContentType")
    # the fast path was taken: QoS 1 messages without properties share one empty object
    assert got[0].properties is got[3].properties is got[4].properties


async def test_fast_acks_complete_every_publish() -> None:
    url = parse_mqtt_url(MQTT_URL)
    topic = f"acks{uuid.uuid4().hex[:8]}/1/command"
    async with make_client(url, f"acks-{uuid.uuid4().hex[:8]}", v5=False) as pub:
        _paho.fast_acks(pub)
        infos = [_paho.publish_nowait(pub, topic, f"{i}") for i in range(300)]
        for _ in range(1000):
            if all(i.is_published() for i in infos):
                break
            await asyncio.sleep(0.01)
        assert all(i.is_published() for i in infos)
        # nothing left waiting for an acknowledgement
        assert not _paho.paho_of(pub)._out_messages


async def test_malformed_publish_packets_fail_as_paho_fails_them() -> None:
    """A short or inconsistent PUBLISH is refused by the fast path exactly as by paho (the
    connection's reader handles MalformedPacket), never an IndexError of ours."""
    url = parse_mqtt_url(MQTT_URL)
    fast = make_client(url, "malformed-fast")
    plain = make_client(url, "malformed-plain")
    _paho.fast_receive(fast)
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
        # MalformedPacket from paho's decoding; ValueError from aiomqtt for an empty topic
        assert outcomes[0] in ("ok", "MalformedPacket", "ValueError"), (packet, outcomes)
        assert "IndexError" not in outcomes
