"""The one place that reaches past aiomqtt's public API into its paho client.

Written for aiomqtt 2.5.x on paho-mqtt 2.2.x (both pinned in pyproject.toml); re-check each
function here when either moves. What we need that aiomqtt does not offer:

- manual acknowledgements, so a message is acknowledged only after its batch is committed;
- publishing a batch straight through paho and waiting for the acknowledgements together
  (aiomqtt's per-call bookkeeping scans every pending call on each publish, which made a
  batch of a few hundred commands cost a second);
- skipping paho's walk over every outgoing message on each acknowledgement while none can
  be queued (it made a batch quadratic);
- receiving without paho's per-message DEBUG logging and Properties building, and the
  same for acknowledgements of our commands.
"""

from __future__ import annotations

import time
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode


def paho_of(client: aiomqtt.Client) -> mqtt.Client:
    return client._client


def manual_acks(client: aiomqtt.Client) -> None:
    """Acknowledge QoS 1 messages only when :func:`ack` is called."""
    paho_of(client).manual_ack_set(True)


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    if message.qos > 0:
        paho_of(client).ack(message.mid, message.qos)


def is_connected(client: aiomqtt.Client) -> bool:
    return bool(paho_of(client).is_connected())


def publish_nowait(client: aiomqtt.Client, topic: str, payload: str | bytes,
                   qos: int = 1) -> Any:
    """Hand one message to paho; returns its MQTTMessageInfo. Raises aiomqtt.MqttError
    when paho refuses it (not connected, queue full)."""
    info = paho_of(client).publish(topic, payload, qos=qos)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttError(f"publish failed: {mqtt.error_string(info.rc)}")
    return info


def end_session_on_disconnect(client: aiomqtt.Client) -> None:
    """MQTT 5: the next DISCONNECT (aiomqtt's, on leaving the context) carries Session
    Expiry Interval 0, so the broker drops our session — a stopped replica holds no
    device's reports; the shared subscription's other members get them."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415 (paho internals, here only)
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    paho = paho_of(client)
    if paho.protocol != mqtt.MQTTv5:
        return
    disconnect = paho.disconnect
    props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0

    def with_expiry(reasoncode: Any = None, properties: Any = None) -> Any:
        return disconnect(reasoncode, properties or props)

    paho.disconnect = with_expiry  # type: ignore[method-assign]


def skip_idle_inflight_scan(client: aiomqtt.Client) -> None:
    """While no more are outstanding than the in-flight limit, none can be queued (each was
    sent when published), so paho's walk on each acknowledgement is skipped."""
    paho = paho_of(client)
    walk = paho._update_inflight

    def update() -> MQTTErrorCode:
        if len(paho._out_messages) <= paho._max_inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return walk()

    paho._update_inflight = update  # type: ignore[method-assign]


def quiet(client: aiomqtt.Client) -> None:
    """No paho DEBUG line per packet (each costs a logging call even when nothing prints)."""
    paho_of(client).disable_logger()


def fast_receive(client: aiomqtt.Client, *, keep_debug_log: bool = False) -> None:
    """The ingest's receive path without per-message waste (measured with cProfile at 17k
    messages/s, MQTT 5): paho logs every PUBLISH and PUBACK at DEBUG through the standard
    logging module (11 µs a call even when nothing is printed), and builds a Properties
    object (walking every property name) for each PUBLISH though devices send none. A
    QoS 1 PUBLISH with no properties is decoded here into the same MQTTMessage, with one
    shared empty Properties; anything else (QoS 0/2, properties present, a short packet)
    goes through paho's own decoding."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415 (paho internals, here only)
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    paho = paho_of(client)
    if not keep_debug_log:
        quiet(client)
    if paho.protocol != mqtt.MQTTv5:
        return
    original = paho._handle_publish
    empty = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]

    def handle() -> MQTTErrorCode:
        header = paho._in_packet["command"]
        packet = paho._in_packet["packet"]
        if (header & 0x06) >> 1 != 1:
            return original()
        slen = int.from_bytes(packet[0:2], "big")
        pos = 2 + slen
        if slen == 0 or len(packet) < pos + 3 or packet[pos + 2] != 0:
            return original()
        mid = int.from_bytes(packet[pos:pos + 2], "big")
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2:pos]))
        message.dup = bool(header & 0x08)
        message.qos = 1
        message.retain = bool(header & 0x01)
        message.properties = empty
        message.payload = bytes(packet[pos + 3:])
        message.timestamp = time.monotonic()
        paho._handle_on_message(message)
        if paho._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return paho._send_puback(mid)

    paho._handle_publish = handle  # type: ignore[method-assign]


def fast_acks(client: aiomqtt.Client) -> None:
    """MQTT 3.1.1: a PUBACK is two bytes of message id, but paho decodes a ReasonCode and a
    Properties object for each (measured: 14% of the command path's CPU with the publish).
    The shared ones here go to the same callback; a PUBCOMP or anything longer than two
    bytes goes through paho's own decoding."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415 (paho internals, here only)
    from paho.mqtt.properties import Properties  # noqa: PLC0415
    from paho.mqtt.reasoncodes import ReasonCode  # noqa: PLC0415

    paho = paho_of(client)
    if paho.protocol == mqtt.MQTTv5:
        return
    original = paho._handle_pubackcomp
    success = ReasonCode(PacketTypes.PUBACK)
    none = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

    def handle(cmd: Any) -> MQTTErrorCode:
        packet = paho._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return original(cmd)
        mid = int.from_bytes(packet, "big")
        with paho._out_message_mutex:
            if mid in paho._out_messages:
                return paho._do_on_publish(mid, success, none)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho._handle_pubackcomp = handle  # type: ignore[method-assign]
