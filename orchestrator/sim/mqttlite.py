"""A small MQTT 3.1.1 client on asyncio streams, for simulated devices that each hold a
connection of their own (thousands in one process: a paho client per device costs a thread
of callbacks and tens of kilobytes; this costs a socket and two tasks).

It does what a device does: CONNECT with its account, SUBSCRIBE to its command topic,
PUBLISH at QoS 1 waiting for the PUBACK, receive QoS 0/1 messages (acknowledging them),
and PINGREQ to keep the connection alive. Nothing more (no QoS 2, no MQTT 5)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

OnMessage = Callable[[str, bytes], None]


class MqttLiteError(Exception):
    pass


class Refused(MqttLiteError):
    """CONNACK with a failure code (4: bad user name or password, 5: not authorised)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"connection refused (CONNACK {code})")
        self.code = code


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_message: OnMessage, keepalive: int) -> None:
        self.reader = reader
        self.writer = writer
        self.on_message = on_message
        self.keepalive = keepalive
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._next = 0
        self.closed = asyncio.Event()
        self.error: BaseException | None = None
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ping())]

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next = self._next % 65535 + 1
            if self._next not in self._pending:
                return self._next
        raise MqttLiteError("no free packet id")

    async def _send(self, data: bytes) -> None:
        if self.closed.is_set():
            raise MqttLiteError("connection closed") from self.error
        self.writer.write(data)
        await self.writer.drain()

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> int:
        """The granted QoS (0x80: refused)."""
        pid = self._packet_id()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[pid] = future
        body = pid.to_bytes(2, "big") + mqtt_string(topic) + bytes([qos])
        await self._send(b"\x82" + varint(len(body)) + body)
        return await self._wait(pid, future, timeout)

    async def publish(self, topic: str, payload: bytes, qos: int = 1,
                      timeout: float = 30.0) -> None:
        if qos == 0:
            body = mqtt_string(topic) + payload
            await self._send(b"\x30" + varint(len(body)) + body)
            return
        pid = self._packet_id()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[pid] = future
        body = mqtt_string(topic) + pid.to_bytes(2, "big") + payload
        await self._send(b"\x32" + varint(len(body)) + body)
        await self._wait(pid, future, timeout)

    async def _wait(self, pid: int, future: asyncio.Future[int], timeout: float) -> int:
        try:
            async with asyncio.timeout(timeout):
                closed = asyncio.ensure_future(self.closed.wait())
                try:
                    await asyncio.wait([future, closed],  # type: ignore[type-var]
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
            if not future.done():
                raise MqttLiteError("connection closed") from self.error
            return future.result()
        finally:
            self._pending.pop(pid, None)

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(1)
                length, shift = 0, 0
                while True:
                    byte = (await self.reader.readexactly(1))[0]
                    length += (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await self.reader.readexactly(length) if length else b""
                kind = head[0] >> 4
                if kind == 3:                                  # PUBLISH
                    qos = (head[0] >> 1) & 3
                    n = int.from_bytes(body[:2], "big")
                    topic = body[2:2 + n].decode(errors="replace")
                    rest = body[2 + n:]
                    if qos:
                        self.writer.write(b"\x40\x02" + rest[:2])   # PUBACK
                        rest = rest[2:]
                    self.on_message(topic, rest)
                elif kind in (4, 9):                           # PUBACK, SUBACK
                    future = self._pending.get(int.from_bytes(body[:2], "big"))
                    if future is not None and not future.done():
                        future.set_result(body[2] if kind == 9 else 0)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self.error = exc
        finally:
            self.closed.set()

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, MqttLiteError):
            while not self.closed.is_set():
                await asyncio.sleep(self.keepalive / 2)
                await self._send(b"\xc0\x00")

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT, as a device losing power does."""
        self.writer.transport.abort()

    async def close(self) -> None:
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write(b"\xe0\x00")
                await self.writer.drain()
        self.writer.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        self.closed.set()


async def connect(host: str, port: int, client_id: str, on_message: OnMessage, *,
                  username: str | None = None, password: str | None = None,
                  clean: bool = False, keepalive: int = 60, timeout: float = 10.0,
                  will: tuple[str, bytes] | None = None) -> Connection:
    """A connection once the broker accepted it (else Refused, or OSError). ``will``: a
    topic and payload the broker publishes (QoS 1) if the connection is lost."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) \
        | (0x40 if password is not None else 0) | (0x0C if will else 0)
    body = mqtt_string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") \
        + mqtt_string(client_id)
    if will:
        body += mqtt_string(will[0]) + mqtt_string(will[1])
    if username is not None:
        body += mqtt_string(username)
    if password is not None:
        body += mqtt_string(password)
    try:
        writer.write(b"\x10" + varint(len(body)) + body)
        await writer.drain()
        ack = await asyncio.wait_for(reader.readexactly(4), timeout)
    except BaseException:
        writer.close()
        raise
    if ack[0] != 0x20 or ack[3] != 0:
        writer.close()
        raise Refused(ack[3])
    return Connection(reader, writer, on_message, keepalive)
