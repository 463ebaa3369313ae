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

INFLIGHT = 5000


class Publisher:
    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is not None:
                return self._client
            attempt = 0
            while True:
                # commands need nothing of MQTT 5; 3.1.1 spares paho a properties object
                # and a reason code per message
                client = make_client(self.settings.mqtt_url, self.client_id, v5=False,
                                     max_inflight_messages=INFLIGHT)
                _paho.skip_idle_inflight_scan(client)
                _paho.fast_acks(client)
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
                self._client, self._stack = client, stack
                return client

    async def publish_many(self, commands: Sequence[tuple[int, str]],
                           timeout: float = 30.0) -> None:
        """Publish every command at QoS 1 and return once the broker acknowledged them all.
        Raises PublishFailed if it does not (the caller keeps them for later)."""
        if not commands:
            return
        client = await self._connected()
        prefix = self.settings.mqtt_topic_prefix
        try:
            infos = [_paho.publish_nowait(client, topics.command(prefix, dev_id), text)
                     for dev_id, text in commands]
        except aiomqtt.MqttError as exc:
            await self.close()
            raise PublishFailed(str(exc)) from exc
        deadline = time.monotonic() + timeout
        delay = 0.001
        while not all(i.is_published() for i in infos):
            if time.monotonic() > deadline or not _paho.is_connected(client):
                await self.close()
                raise PublishFailed("broker did not acknowledge the commands")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await stack.aclose()
