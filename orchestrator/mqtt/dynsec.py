"""Per-device broker credentials and ACLs through Mosquitto's dynamic security plugin.

``config(...)`` builds the plugin's initial file (pure): the orchestrator's account (ingest,
commands, and the right to manage device accounts). Each device gets a role of its own,
``device-<id>``, whose ACLs let it publish only to ``{prefix}/<id>/status|progress`` and
subscribe only to ``{prefix}/<id>/command`` (literal topics: Mosquitto 2.0.11's plugin does
not substitute ``%u`` in ACLs — measured, see tests/integration/test_broker_security.py).
Anonymous clients are refused by ``allow_anonymous false`` in the broker's configuration.

``set_device_secret`` creates a device's account, or rotates its password, over the
plugin's ``$CONTROL/dynamic-security/v1`` topic: the secret is stored only in the broker,
hashed (PBKDF2-SHA512), and returned once to be shown.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
from typing import Any

import aiomqtt

from orchestrator.config import MqttUrl
from orchestrator.mqtt.connection import make_client

CONTROL = "$CONTROL/dynamic-security/v1"
ITERATIONS = 101          # what mosquitto_ctrl writes
DEVICE_ROLE = "device"         # device N's role is device-N
ORCHESTRATOR_ROLE = "orchestrator"


class DynsecError(RuntimeError):
    pass


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = ITERATIONS) -> dict[str, Any]:
    """The plugin's stored form of a password."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {"password": base64.b64encode(digest).decode(),
            "salt": base64.b64encode(salt).decode(), "iterations": iterations}


def _acl(kind: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": allow}


def device_acls(prefix: str, dev_id: int) -> list[dict[str, Any]]:
    return [_acl("publishClientSend", f"{prefix}/{dev_id}/status"),
            _acl("publishClientSend", f"{prefix}/{dev_id}/progress"),
            _acl("subscribePattern", f"{prefix}/{dev_id}/command"),
            _acl("publishClientReceive", f"{prefix}/{dev_id}/command")]


def roles(prefix: str) -> list[dict[str, Any]]:
    orchestrator = [_acl("subscribePattern", f"{prefix}/+/status"),
                    _acl("subscribePattern", f"{prefix}/+/progress"),
                    _acl("publishClientReceive", f"{prefix}/+/status"),
                    _acl("publishClientReceive", f"{prefix}/+/progress"),
                    _acl("publishClientSend", f"{prefix}/+/command"),
                    _acl("publishClientSend", f"{CONTROL.rsplit('/', 1)[0]}/#"),
                    _acl("publishClientReceive", f"{CONTROL.rsplit('/', 1)[0]}/#"),
                    _acl("subscribePattern", f"{CONTROL.rsplit('/', 1)[0]}/#")]
    return [{"rolename": ORCHESTRATOR_ROLE, "acls": orchestrator}]


def config(prefix: str, orchestrator_user: str, orchestrator_password: str) -> dict[str, Any]:
    """The plugin's initial configuration file."""
    return {
        "clients": [{"username": orchestrator_user, "textName": "the orchestrator",
                     **hash_password(orchestrator_password),
                     "roles": [{"rolename": ORCHESTRATOR_ROLE}]}],
        "groups": [],
        "roles": roles(prefix),
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
    }


def new_secret() -> str:
    return secrets.token_urlsafe(24)


async def control(url: MqttUrl, commands: list[dict[str, Any]],
                  timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send plugin commands as the orchestrator's account; the plugin's answers."""
    async with make_client(url, f"dynsec-{secrets.token_hex(4)}", v5=True) as client:
        await client.subscribe(f"{CONTROL}/response", qos=1)
        await client.publish(CONTROL, json.dumps({"commands": commands}), qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                payload = message.payload
                body = json.loads(payload if isinstance(payload, bytes | str) else b"{}")
                return list(body.get("responses", []))
    raise DynsecError("no answer from the dynamic security plugin")


async def set_device_secret(url: MqttUrl, prefix: str, dev_id: int) -> tuple[str, bool]:
    """Create device ``dev_id``'s account and role, or rotate its password:
    (secret, created)."""
    secret = new_secret()
    user, role = str(dev_id), f"{DEVICE_ROLE}-{dev_id}"
    try:
        answers = await control(url, [
            {"command": "createRole", "rolename": role, "acls": device_acls(prefix, dev_id)},
            {"command": "createClient", "username": user, "password": secret,
             "roles": [{"rolename": role}]}])
        if len(answers) == 2 and not answers[1].get("error"):
            return secret, True
        if len(answers) == 2 and "exists" in str(answers[1].get("error", "")).lower():
            answers = await control(url, [{"command": "setClientPassword", "username": user,
                                           "password": secret}])
            if answers and not answers[0].get("error"):
                return secret, False
    except (aiomqtt.MqttError, TimeoutError) as exc:
        raise DynsecError(f"broker {url.host}:{url.port}: {exc}") from exc
    raise DynsecError(f"the broker refused: {answers}")
