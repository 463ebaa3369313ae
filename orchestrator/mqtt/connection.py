"""Building aiomqtt clients from settings."""

from __future__ import annotations

import ssl
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.config import MqttUrl

RECEIVE_MAXIMUM = 65535


def tls_context(url: MqttUrl) -> ssl.SSLContext | None:
    """For mqtts: the system's CAs or ``ca_file``, and a client certificate if given."""
    if not url.tls:
        return None
    context = ssl.create_default_context(cafile=url.ca_file)
    if url.cert_file and url.key_file:
        context.load_cert_chain(url.cert_file, url.key_file)
    return context


def make_client(
    url: MqttUrl,
    identifier: str | None = None,
    *,
    persistent: bool = False,
    v5: bool = True,
    session_expiry: int = 60,
    receive_maximum: int = RECEIVE_MAXIMUM,
    max_packet_size: int | None = None,
    **kwargs: Any,
) -> aiomqtt.Client:
    """An aiomqtt client; ``persistent`` keeps the broker session across reconnects for
    ``session_expiry`` seconds (MQTT 5). ``receive_maximum`` bounds the QoS 1 messages the
    broker sends before we acknowledge (so it bounds our memory), ``max_packet_size`` the
    size of any one of them (the broker drops larger ones for us)."""
    props = None
    extra: dict[str, Any] = {}
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # Without it Mosquitto keeps at most 20 messages in flight to us and queues (then
        # drops, past max_queued_messages) the rest of a burst.
        props.ReceiveMaximum = receive_maximum
        if max_packet_size is not None:
            props.MaximumPacketSize = max_packet_size
        if persistent:
            props.SessionExpiryInterval = session_expiry
            extra["clean_start"] = False
        extra["protocol"] = aiomqtt.ProtocolVersion.V5
    else:
        extra["clean_session"] = not persistent
    client = aiomqtt.Client(
        url.host,
        url.port,
        username=url.username,
        password=url.password,
        identifier=identifier,
        properties=props,
        tls_context=tls_context(url),
        **extra,
        **kwargs,
    )
    # we publish in batches on purpose; aiomqtt warns past 10 calls in flight
    client.pending_calls_threshold = 1_000_000
    return client
