"""Configuration: environment variables (``ORCH_*``) over an optional TOML file.

Parsed once at start-up into a frozen :class:`Settings`. A wrong value raises
:class:`ConfigError` whose message names the variable, so start-up can stop with
one clear line.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.domain.device import (
    DEFAULT_DISPATCH_TIMEOUT,
    DEFAULT_LOST_COMMAND_GRACE,
    DEFAULT_STATUS_MAX_AGE,
    Policy,
)
from orchestrator.domain.radio import DAY


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the variable."""


@dataclass(frozen=True, slots=True)
class MqttUrl:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None        # mqtts: a private CA instead of the system's
    cert_file: str | None = None      # mqtts: a client certificate (with key_file)
    key_file: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __repr__(self) -> str:  # never show the password
        user = f"{self.username}:***@" if self.username else ""
        return f"MqttUrl('{self.scheme}://{user}{self.host}:{self.port}')"


def client_id_base() -> str:
    """What a replica's client id starts with when none is configured: the host name. The
    service appends a slot that no other replica of the host holds (store/slots.py)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"orchestrator-{host}"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = dataclasses.field(default=None, repr=False)
    mqtt_url: MqttUrl = dataclasses.field(
        default_factory=lambda: MqttUrl("mqtt", "127.0.0.1", 1883)
    )
    mqtt_topic_prefix: str = "ota"
    mqtt_protocol: str = "5"
    mqtt_shared_group: str | None = "orchestrators"
    mqtt_client_id: str | None = None   # None: orchestrator-<host>-<slot>, see Service
    mqtt_session_expiry: int = 60
    mqtt_max_payload: int = 16384
    onenet_url: str = "http://ota.heclouds.com"
    onenet_product_id: str | None = None
    onenet_access_key: str | None = dataclasses.field(default=None, repr=False)
    onenet_authorization: str | None = dataclasses.field(default=None, repr=False)
    onenet_sign_method: str = "sha256"
    onenet_check_method: str = "POST"
    onenet_send: str = "name"
    onenet_timeout: float = 10.0
    onenet_ca_file: str | None = None
    onenet_concurrency: int = 64
    onenet_progress_relay: bool = True
    progress_require_attempt: bool = True
    download_url_template: str = "http://{ipPort}/ota/download/{token}"
    api_listen: str = "127.0.0.1:8080"
    api_token: str | None = dataclasses.field(default=None, repr=False)
    api_read_token: str | None = dataclasses.field(default=None, repr=False)
    log_format: str | None = None
    log_level: str = "info"
    status_max_age: float = DEFAULT_STATUS_MAX_AGE
    dispatch_timeout: float = DEFAULT_DISPATCH_TIMEOUT
    lost_command_grace: float = DEFAULT_LOST_COMMAND_GRACE
    radio_period: float = DAY           # the day radio profiles divide (tests compress it)
    max_per_cell: int | None = None     # downloads at once per cell, fleet-wide
    claim_lease: float = 60.0
    ingest_batch_size: int = 2000
    ingest_flush_interval: float = 0.05
    scheduler_batch_size: int = 2000
    scheduler_workers: int = 2          # batches in progress at once per replica
    scheduler_poll_interval: float = 0.5
    event_retention_days: int = 90
    max_in_flight: int | None = None    # devices checking or in flight, fleet-wide

    @property
    def mqtt_v5(self) -> bool:
        return self.mqtt_protocol == "5"

    @property
    def api_host(self) -> str:
        return self.api_listen.rsplit(":", 1)[0].strip("[]")

    @property
    def api_port(self) -> int:
        return int(self.api_listen.rsplit(":", 1)[1])

    def policy(self) -> Policy:
        """The knobs of the domain's decisions that configuration sets."""
        return Policy(status_max_age=self.status_max_age,
                      dispatch_timeout=self.dispatch_timeout,
                      lost_command_grace=self.lost_command_grace,
                      radio_period=self.radio_period)

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError("ORCH_DATABASE_URL: required (a PostgreSQL DSN)")
        return self.database_url


def _parse_dsn(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"{name}: scheme must be postgresql:// (got {parts.scheme or 'none'!r})")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"{name}: bad port ({exc})") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"{name}: no host in DSN")
    return value


def parse_mqtt_url(value: str, name: str = "ORCH_MQTT_URL") -> MqttUrl:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"{name}: scheme must be mqtt:// or mqtts:// (got {parts.scheme!r})")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{name}: bad port ({exc})") from None
    if not parts.hostname:
        raise ConfigError(f"{name}: no host")
    if port is None:
        port = 8883 if parts.scheme == "mqtts" else 1883
    return MqttUrl(parts.scheme, parts.hostname, port, parts.username, parts.password)


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: must be an http:// or https:// URL (got {value!r})")
    try:
        parts.port  # noqa: B018
    except ValueError as exc:
        raise ConfigError(f"{name}: bad port ({exc})") from None
    return value.rstrip("/")


def _listen(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}: expected host:port (got {value!r})")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: bad port {port!r}")
    return value


def _positive(kind: Callable[[str], Any]) -> Callable[[str, str], Any]:
    def parse(name: str, value: str) -> Any:
        try:
            out = kind(value)
        except ValueError:
            raise ConfigError(f"{name}: not a number: {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{name}: must be a finite number (got {value!r})")
        if out <= 0:
            raise ConfigError(f"{name}: must be > 0 (got {value!r})")
        return out

    return parse


def _choice(*options: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        low = value.strip()
        if low.lower() in options:
            return low.lower()
        if low.upper() in options:
            return low.upper()
        raise ConfigError(f"{name}: must be one of {', '.join(options)} (got {value!r})")

    return parse


def _bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false (got {value!r})")


def _prefix(name: str, value: str) -> str:
    if not value or any(c in value for c in "+#/") or value.startswith("$"):
        raise ConfigError(f"{name}: one topic level without + # / or leading $ (got {value!r})")
    return value


def _group(name: str, value: str) -> str | None:
    """A shared-subscription group, or ``none`` for a plain subscription."""
    if value.strip().lower() == "none":
        return None
    return _prefix(name, value)


def _file(name: str, value: str) -> str:
    if not Path(value).is_file():
        raise ConfigError(f"{name}: no such file {value!r}")
    return value


def _text(name: str, value: str) -> str:
    if not value:
        raise ConfigError(f"{name}: empty")
    return value


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "database_url": _parse_dsn,
    "mqtt_url": lambda n, v: parse_mqtt_url(v, n),
    "mqtt_topic_prefix": _prefix,
    "mqtt_ca_file": _file,
    "mqtt_cert_file": _file,
    "mqtt_key_file": _file,
    "mqtt_protocol": _choice("5", "3.1.1"),
    "mqtt_shared_group": _group,
    "mqtt_session_expiry": _positive(int),
    "mqtt_max_payload": _positive(int),
    "event_retention_days": _positive(int),
    "mqtt_client_id": _text,
    "onenet_url": _http_url,
    "onenet_product_id": _text,
    "onenet_access_key": _text,
    "onenet_authorization": _text,
    "onenet_sign_method": _choice("md5", "sha1", "sha256"),
    "onenet_check_method": _choice("POST", "GET"),
    "onenet_send": _choice("name", "code"),
    "onenet_timeout": _positive(float),
    "onenet_ca_file": _file,
    "onenet_concurrency": _positive(int),
    "onenet_progress_relay": _bool,
    "progress_require_attempt": _bool,
    "download_url_template": _text,
    "api_listen": _listen,
    "api_token": _text,
    "api_read_token": _text,
    "log_format": _choice("json", "console"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "status_max_age": _positive(float),
    "dispatch_timeout": _positive(float),
    "lost_command_grace": _positive(float),
    "radio_period": _positive(float),
    "max_per_cell": _positive(int),
    "claim_lease": _positive(float),
    "ingest_batch_size": _positive(int),
    "ingest_flush_interval": _positive(float),
    "scheduler_batch_size": _positive(int),
    "scheduler_workers": _positive(int),
    "scheduler_poll_interval": _positive(float),
    "max_in_flight": _positive(int),
}


_NO_EMPTY = frozenset({"api_token", "api_read_token"})


def env_name(key: str) -> str:
    return "ORCH_" + key.upper()


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings` from a TOML file, then the environment, then ``overrides``."""
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[str, str]] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
        section = data.get("orchestrator", data)
        for key, value in section.items():
            if key not in _PARSERS:
                raise ConfigError(f"--config {path}: unknown key {key!r}")
            raw[key] = (f"{key} in {path}", str(value).lower() if isinstance(value, bool)
                        else str(value))
    for key in _PARSERS:
        name = env_name(key)
        if name in environ and environ[name] != "":
            raw[key] = (name, environ[name])
        elif name in environ and key in _NO_EMPTY:
            raise ConfigError(f"{name}: empty (unset it, or give a token: an empty one would "
                              "leave the API open)")
    values: dict[str, Any] = {}
    for key, (name, value) in raw.items():
        values[key] = _PARSERS[key](name, value)
    values.update(overrides)
    tls = {k: values.pop(f"mqtt_{k}") for k in ("ca_file", "cert_file", "key_file")
           if f"mqtt_{k}" in values}
    if tls:
        if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
            raise ConfigError("ORCH_MQTT_CERT_FILE and ORCH_MQTT_KEY_FILE go together")
        url = values.get("mqtt_url") or MqttUrl("mqtt", "127.0.0.1", 1883)
        values["mqtt_url"] = dataclasses.replace(url, **tls)
    if values.get("onenet_access_key") and not values.get("onenet_product_id"):
        raise ConfigError("ORCH_ONENET_PRODUCT_ID: required with ORCH_ONENET_ACCESS_KEY")
    if "onenet_access_key" in values:
        try:
            base64.b64decode(values["onenet_access_key"], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("ORCH_ONENET_ACCESS_KEY: not base64") from None
    return Settings(**values)
