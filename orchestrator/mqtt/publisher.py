"""Command publishing at QoS 1 over one long-lived connection, reconnecting as needed:
the port ``CommandPublisher``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import aiomqtt
import structlog

from orchestrator.config import Settings
from orchestrator.domain.resilience import backoff
from orchestrator.mqtt import _paho, topics
from orchestrator.mqtt.connection import make_client
from orchestrator.ports import PublishFailed

log = structlog.get_logger(__name__)

class Publisher:
    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._direct: _paho.DirectPublish | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> _paho.DirectPublish:
        async with self._lock:
            if self._direct is not None:
                return self._direct
            attempt = 0
            while True:
                # commands need nothing of MQTT 5; 3.1.1 has the smallest packets
                client = make_client(self.settings.mqtt_url, self.client_id, v5=False)
                direct = _paho.DirectPublish(client)
                if self.settings.log_level != "debug":
                    _paho.quiet(client)
                stack = contextlib.AsyncExitStack()
                try:
                    await stack.enter_async_context(client)
                except aiomqtt.MqttError as exc:
                    delay = backoff(attempt, 0.5, 10.0)
                    attempt += 1
                    log.warning("command publisher cannot connect", error=str(exc),
                                retry_in=round(delay, 2))
                    await asyncio.sleep(delay)
                    continue
                self._stack, self._direct = stack, direct
                return direct

    async def publish_many(self, commands: Sequence[tuple[int, str]],
                           timeout: float = 30.0) -> None:
        """Publish every command at QoS 1 and return once the broker acknowledged them all.
        Raises PublishFailed if it does not (the caller keeps them for later)."""
        if not commands:
            return
        direct = await self._connected()
        prefix = self.settings.mqtt_topic_prefix
        try:
            batch = direct.publish([(topics.command(prefix, dev_id), text.encode())
                                    for dev_id, text in commands])
        except aiomqtt.MqttError as exc:
            await self.close()
            raise PublishFailed(str(exc)) from exc
        deadline = time.monotonic() + timeout
        while not batch.done.is_set():
            if time.monotonic() > deadline or not direct.connected():
                await self.close()
                raise PublishFailed("broker did not acknowledge the commands")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.done.wait(), 0.1)

    async def close(self) -> None:
        stack, self._stack, self._direct = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await stack.aclose()
