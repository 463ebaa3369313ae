"""Command publishing at QoS 1 over one long-lived connection, reconnecting as needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import aiomqtt
import structlog

from orchestrator.config import Settings
from orchestrator.mqtt import topics
from orchestrator.mqtt.connection import backoff, make_client

log = structlog.get_logger(__name__)

CHUNK = 64


class Publisher:
    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is not None:
                return self._client
            attempt = 0
            while True:
                client = make_client(self.settings.mqtt_url, self.client_id,
                                     v5=self.settings.mqtt_v5, max_inflight_messages=1000)
                try:
                    await client.__aenter__()
                    self._client = client
                    return client
                except aiomqtt.MqttError as exc:
                    delay = backoff(attempt, cap=10.0)
                    attempt += 1
                    log.warning("command publisher cannot connect", error=str(exc),
                                retry_in=round(delay, 2))
                    await asyncio.sleep(delay)

    async def publish_many(self, commands: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Publish every command at QoS 1 and wait for the broker's acknowledgements.
        Raises ``aiomqtt.MqttError`` if the connection fails (the caller retries later)."""
        if not commands:
            return
        client = await self._connected()
        prefix = self.settings.mqtt_topic_prefix
        try:
            # aiomqtt and paho scan every pending publish on each call and acknowledgement:
            # a few dozen at a time keeps that linear
            for start in range(0, len(commands), CHUNK):
                await asyncio.gather(*(
                    client.publish(topics.command(prefix, dev_id), json.dumps(payload), qos=1)
                    for dev_id, payload in commands[start:start + CHUNK]))
        except aiomqtt.MqttError:
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
