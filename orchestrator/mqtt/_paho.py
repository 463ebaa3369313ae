"""The one place that reaches past aiomqtt's public API into its paho client.

Written for aiomqtt 2.5.x on paho-mqtt 2.2.x (both pinned in pyproject.toml); re-check each
function here when either moves. What we need that aiomqtt does not offer:

- manual acknowledgements, so a message is acknowledged only after its batch is committed;
- publishing a batch of commands as one write and counting their acknowledgements
  (aiomqtt's per-call bookkeeping scans every pending call on each publish, which made a
  batch of a few hundred commands cost a second; paho's builds several objects per
  message and walked every outgoing message on each acknowledgement);
- receiving without paho's per-message DEBUG logging, Properties building and three
  ``recv()`` calls per packet, and without aiomqtt's per-message objects and task waits;
  acknowledging a committed batch in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
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
        # set by DirectPublish: takes a PUBACK's message id, False when it is not its own
        self.puback: Callable[[int], bool] | None = None
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
            if self.puback is not None and self.paho._in_packet["command"] == 0 and \
                    self._pubacks(self.puback):
                continue
            rc = self._loop_read(max_packets)
        return rc

    def _pubacks(self, take: Callable[[int], bool]) -> int:
        """Consume the whole PUBACKs (MQTT 3.1.1: 0x40 0x02 and the message id) at the head
        of the buffer that ``take`` accepts, without paho's three reads and handler per
        packet; the first other packet is left to paho. Returns how many were consumed."""
        buf, pos, end = self._buf, self._pos, len(self._buf)
        start = pos
        while pos + 4 <= end and buf[pos] == 0x40 and buf[pos + 1] == 0x02 and \
                take((buf[pos + 2] << 8) | buf[pos + 3]):
            pos += 4
        if pos != start:
            self._pos = pos
            self.paho._last_bytes_received = mqtt.time_func()   # as paho's own read does
        return (pos - start) // 4

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
    """Acknowledge these messages (manual acks) in one write. Only QoS 1 ones need it: the
    ingest subscribes at QoS 1, so the broker sends nothing at QoS 2."""
    paho = paho_of(client)
    if not paho._manual_ack:
        return
    mids = [r.mid for r in received if r.qos == 1]
    if mids:
        data = b"".join([_PUBACK + mid.to_bytes(2, "big") for mid in mids])
        paho._packet_queue(mqtt.PUBACK, data, 0, 0)


_PUBACK = bytes([mqtt.PUBACK, 2])       # fixed header: PUBACK, remaining length 2 (no reason)


class Batch:
    """A batch of QoS 1 publishes: ``done`` is set once the broker acknowledged them all."""

    def __init__(self, n: int) -> None:
        self.remaining = n
        self.done = asyncio.Event()
        if n == 0:
            self.done.set()

    def acked(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


class DirectPublish:
    """QoS 1 PUBLISH packets (MQTT 3.1.1) built here and written in one piece, and their
    PUBACKs counted here. Per message paho's publish builds an MQTTMessage, an
    MQTTMessageInfo with a ``threading.Condition`` and an out-message entry, and decodes a
    ReasonCode and a Properties object from each PUBACK (measured: 14% of the command
    path's CPU). A batch of commands needs none of it: what is not acknowledged is
    published again from the outbox, on a new connection (paho's resending is not used).
    Reads are buffered (:class:`Reads`), and the PUBACKs a read brings are counted straight
    from the buffer (paho's reading, packet by packet, cost 4 us a command: py-spy)."""

    LIMIT = 60_000                      # unacknowledged, below the 65,535 message ids

    def __init__(self, client: aiomqtt.Client) -> None:
        self.paho = paho = paho_of(client)
        if paho.protocol == mqtt.MQTTv5:
            raise ValueError("DirectPublish speaks MQTT 3.1.1")
        self.waiting: dict[int, Batch] = {}
        Reads(client).puback = self._acked
        original = paho._handle_pubackcomp

        def handle(cmd: Any) -> MQTTErrorCode:
            packet = paho._in_packet["packet"]
            if cmd == "PUBACK" and len(packet) == 2 and \
                    self._acked(int.from_bytes(packet, "big")):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            return original(cmd)

        paho._handle_pubackcomp = handle  # type: ignore[method-assign]

    def _acked(self, mid: int) -> bool:
        batch = self.waiting.pop(mid, None)
        if batch is None:
            return False
        batch.acked()
        return True

    def connected(self) -> bool:
        return bool(self.paho.is_connected())

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> Batch:
        """Queue these (topic, payload) messages at QoS 1. Raises aiomqtt.MqttError when
        not connected or too many are unacknowledged."""
        paho = self.paho
        if not self.connected():
            raise aiomqtt.MqttError("publish failed: not connected")
        if len(self.waiting) + len(messages) > self.LIMIT:
            raise aiomqtt.MqttError("publish failed: too many unacknowledged messages")
        batch = Batch(len(messages))
        parts = []
        for topic, payload in messages:
            mid = paho._mid_generate()
            raw = topic.encode()
            rest = b"".join((len(raw).to_bytes(2, "big"), raw, mid.to_bytes(2, "big"),
                             payload))
            parts.append(b"\x32" + _varint(len(rest)) + rest)
            self.waiting[mid] = batch
        if parts:
            paho._packet_queue(mqtt.PUBLISH, b"".join(parts), 0, 1)
        return batch


def _varint(n: int) -> bytes:
    """MQTT's Remaining Length."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
