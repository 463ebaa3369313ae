"""Command publishing at QoS 1 over one long-lived connection, reconnecting as needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode

from orchestrator.config import Settings
from orchestrator.mqtt import topics
from orchestrator.mqtt.connection import backoff, make_client

log = structlog.get_logger(__name__)

INFLIGHT = 5000


def _skip_idle_inflight_scan(paho: mqtt.Client) -> None:
    """paho walks every outgoing message on each acknowledgement to release queued ones.
    While no more are outstanding than the in-flight limit, none can be queued (each was
    sent when published), so the walk is skipped: it made a batch quadratic."""
    walk = paho._update_inflight

    def update() -> MQTTErrorCode:
        if len(paho._out_messages) <= paho._max_inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return walk()

    paho._update_inflight = update  # type: ignore[method-assign]


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
                # commands need nothing of MQTT 5; 3.1.1 spares paho a properties object
                # and a reason code per message
                client = make_client(self.settings.mqtt_url, self.client_id, v5=False,
                                     max_inflight_messages=INFLIGHT)
                _skip_idle_inflight_scan(client._client)
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

    async def publish_many(self, commands: Sequence[tuple[int, str | dict[str, Any]]],
                           timeout: float = 30.0) -> None:
        """Publish every command at QoS 1 and return once the broker acknowledged them all.
        Raises ``aiomqtt.MqttError`` if it does not (the caller keeps them for later).

        The packets go straight to paho and we wait for the acknowledgements together:
        aiomqtt's per-call bookkeeping scans every pending call on each publish, which made
        a batch of a few hundred commands cost a second."""
        if not commands:
            return
        client = await self._connected()
        paho = client._client
        prefix = self.settings.mqtt_topic_prefix
        infos = []
        for dev_id, payload in commands:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            info = paho.publish(topics.command(prefix, dev_id), text, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                await self.close()
                raise aiomqtt.MqttError(f"publish failed: {mqtt.error_string(info.rc)}")
            infos.append(info)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while not all(i.is_published() for i in infos):
            if time.monotonic() > deadline or not paho.is_connected():
                await self.close()
                raise aiomqtt.MqttError("broker did not acknowledge the commands")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
