"""The one place that reaches past aiomqtt's public API into its paho client.

Written for aiomqtt 2.5.x on paho-mqtt 2.2.x (both pinned in pyproject.toml); re-check each
function here when either moves. What we need that aiomqtt does not offer:

- manual acknowledgements, so a message is acknowledged only after its batch is committed;
- publishing a batch straight through paho and waiting for the acknowledgements together
  (aiomqtt's per-call bookkeeping scans every pending call on each publish, which made a
  batch of a few hundred commands cost a second);
- skipping paho's walk over every outgoing message on each acknowledgement while none can
  be queued (it made a batch quadratic);
- receiving without paho's per-message DEBUG logging, Properties building and three
  ``recv()`` calls per packet, and without aiomqtt's per-message objects and task waits;
  acknowledging a committed batch in one write; the same economies for the
  acknowledgements of our commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode


def paho_of(client: aiomqtt.Client) -> mqtt.Client:
    return client._client


def manual_acks(client: aiomqtt.Client) -> None:
    """Acknowledge QoS 1 messages only when :func:`ack` is called."""
    paho_of(client).manual_ack_set(True)


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


class Received(NamedTuple):
    """An incoming PUBLISH as the ingest needs it (no paho or aiomqtt message object)."""

    topic: str          # undecodable bytes replaced, so the topic check rejects it
    payload: bytes
    qos: int
    mid: int


def fast_receive(client: aiomqtt.Client, deliver: Callable[[Received], None], *,
                 keep_debug_log: bool = False) -> Reads:
    """The ingest's receive path without per-message waste (profiled with cProfile at
    17-20k messages/s): every PUBLISH goes straight to ``deliver`` instead of through
    aiomqtt's queue (an aiomqtt Message and an ``asyncio.wait`` over two tasks per message),
    and the common one — QoS 1 without properties — is decoded here without paho's
    MQTTMessage, Properties object or DEBUG log line (11 µs a call even when nothing is
    printed). QoS 0/2, properties present or a short packet go through paho's own decoding,
    then to ``deliver`` as well. ``client.messages`` then only reports the connection's end.
    Socket reads are buffered and can be paused: the returned :class:`Reads`."""
    paho = paho_of(client)
    if not keep_debug_log:
        quiet(client)
    reads = Reads(client)
    skip = 1 if paho.protocol == mqtt.MQTTv5 else 0      # the property length byte
    original = paho._handle_publish

    def on_message(m: mqtt.MQTTMessage) -> None:
        deliver(Received(m._topic.decode("utf-8", "replace"), bytes(m.payload), m.qos, m.mid))

    def handle() -> MQTTErrorCode:
        header = paho._in_packet["command"]
        packet = paho._in_packet["packet"]
        if header & 0x06 != 0x02:                           # not QoS 1
            return original()
        slen = int.from_bytes(packet[0:2], "big")
        pos = 2 + slen
        if slen == 0 or len(packet) < pos + 2 + skip or (skip and packet[pos + 2] != 0):
            return original()
        mid = int.from_bytes(packet[pos:pos + 2], "big")
        deliver(Received(bytes(packet[2:pos]).decode("utf-8", "replace"),
                         bytes(packet[pos + 2 + skip:]), 1, mid))
        if paho._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return paho._send_puback(mid)

    paho._handle_publish = handle  # type: ignore[method-assign]
    paho._handle_on_message = on_message  # type: ignore[method-assign,assignment]
    return reads


class Reads:
    """Buffered socket reads for one client, which the ingest can pause.

    paho reads a packet with three ``recv()`` calls (type, length, rest) and one packet per
    readable event; here one ``recv(size)`` feeds as many packets as it holds, all handled
    in that event.

    Pausing stops reading the socket altogether (its reader is taken off the event loop),
    so TCP pushes back to the broker, which queues for us. Receive Maximum alone does not
    bound what we hold: Mosquitto 2.0.11 respects it until the first acknowledgement, then
    sends its whole queue (measured: 4,000 in flight unacknowledged, then all 20,000 after
    4,000 acknowledgements). While paused paho answers no PINGRESP, so a pause longer than
    the keepalive ends the connection; the session and every unacknowledged message stay
    with the broker."""

    def __init__(self, client: aiomqtt.Client, size: int = 65536) -> None:
        self.client = client
        self.paho = paho = paho_of(client)
        self.size = size
        self.paused = False
        self._buf, self._pos = b"", 0
        self._owner: object = None
        self._fd = -1
        self._sock_recv = paho._sock_recv
        self._loop_read = paho.loop_read
        paho._sock_recv = self._recv  # type: ignore[method-assign]
        paho.loop_read = self._read  # type: ignore[method-assign]

    def _recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf) or self._owner is not self.paho._sock:
            if self.paused:
                raise BlockingIOError       # paho: nothing to read now
            data = self._sock_recv(self.size)   # BlockingIOError when there is nothing
            self._buf, self._pos, self._owner = data, 0, self.paho._sock
            if not data:
                return data                 # end of stream
        chunk = self._buf[self._pos:self._pos + bufsize]
        self._pos += len(chunk)
        return chunk

    def _buffered(self) -> bool:
        return self._pos < len(self._buf) and self._owner is self.paho._sock is not None

    def _read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = self._loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._buffered():
            rc = self._loop_read(max_packets)
        return rc

    def pause(self) -> None:
        sock = self.paho._sock
        if self.paused or sock is None:
            return
        self.paused = True
        self._fd = sock.fileno()
        asyncio.get_running_loop().remove_reader(self._fd)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        sock = self.paho._sock
        if sock is None or sock.fileno() != self._fd:
            return                          # closed meanwhile: nothing to resume
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._readable)
        loop.call_soon(self._readable)      # what the buffer already holds

    def _readable(self) -> None:
        """aiomqtt's reader callback (aiomqtt/client.py, _on_socket_open), restated."""
        try:
            while not self.paused:
                self.paho.loop_read()
                pending = getattr(self.paho._sock, "pending", None)
                if pending is None or pending() <= 0:
                    break
        except Exception as exc:
            if not self.client._disconnected.done():
                self.client._disconnected.set_exception(exc)


def ack_all(client: aiomqtt.Client, received: Iterable[Received]) -> None:
    """Acknowledge these messages (manual acks): the QoS 1 ones in one write."""
    paho = paho_of(client)
    if not paho._manual_ack:
        return
    mids = []
    for r in received:
        if r.qos == 1:
            mids.append(r.mid)
        elif r.qos == 2:
            paho.ack(r.mid, 2)
    if mids:
        data = b"".join([_PUBACK + mid.to_bytes(2, "big") for mid in mids])
        paho._packet_queue(mqtt.PUBACK, data, 0, 0)


_PUBACK = bytes([mqtt.PUBACK, 2])       # fixed header: PUBACK, remaining length 2 (no reason)


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
