"""The simulator's scenario file (JSON or TOML): credentials, devices, packages, tasks,
automatic-add strategies, scripted answers and faults. See ``deploy/onenet-scenario.toml``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.domain.onenet import TYPE_CODES
from orchestrator.domain.versions import BadVersion, check_version


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Registered:
    dev_id: int
    manuf: str | None = None
    model: str | None = None
    fota_version: str | None = None
    sota_version: str | None = None


@dataclass(frozen=True, slots=True)
class Package:
    id: str
    version: str
    size: int
    diff_from: str | None = None      # a differential package applies to this version only


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task (``devices`` listed or ``"all"``) or an automatic-add strategy (conditions)."""

    type: int
    package: str
    signal: int = 0
    power: int = 0
    retry: int = 3
    interval: int = 60
    devices: tuple[int, ...] | None = None       # None: every device
    manuf: str | None = None
    model: str | None = None
    from_versions: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Faults:
    errno7_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Scenario:
    product_id: str = "100000"
    access_key: str | None = None     # None: a random key is made at start
    auth: bool = True                 # false: any Authorization is accepted
    ip_port: str | None = None        # advertised download address; default: where we listen
    auto_register: bool = False       # accept checks from devices not listed
    devices: tuple[Registered, ...] = ()
    packages: tuple[Package, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    strategies: tuple[TaskSpec, ...] = ()
    script: dict[int, tuple[int, ...]] = field(default_factory=dict)
    download_errors: dict[int, str] = field(default_factory=dict)
    faults: Faults = Faults()


def _int(where: str, value: Any, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ScenarioError(f"{where}: expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def _version(where: str, value: Any) -> str:
    try:
        return check_version(value, where)
    except BadVersion as exc:
        raise ScenarioError(str(exc)) from None


def _type(where: str, value: Any) -> int:
    if value in TYPE_CODES:
        return TYPE_CODES[value]
    if value in (1, 2):
        return int(value)
    raise ScenarioError(f"{where}: type must be fota, sota, 1 or 2 (got {value!r})")


def _spec(where: str, raw: dict[str, Any], packages: dict[str, Package]) -> TaskSpec:
    known = {"type", "package", "signal", "power", "retry", "interval", "devices", "manuf",
             "model", "from_versions"}
    unknown = set(raw) - known
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if raw.get("package") not in packages:
        raise ScenarioError(f"{where}: package {raw.get('package')!r} is not defined")
    devices = raw.get("devices", "all")
    dev_tuple = None if devices == "all" else tuple(
        _int(f"{where}.devices", d, 1) for d in devices)
    froms = raw.get("from_versions")
    return TaskSpec(
        type=_type(f"{where}.type", raw.get("type", "fota")),
        package=raw["package"],
        signal=_int(f"{where}.signal", raw.get("signal", 0), -200, 200),
        power=_int(f"{where}.power", raw.get("power", 0), 0, 100),
        retry=_int(f"{where}.retry", raw.get("retry", 3), 0, 1000),
        interval=_int(f"{where}.interval", raw.get("interval", 60), 0, 86400 * 30),
        devices=dev_tuple,
        manuf=raw.get("manuf"),
        model=raw.get("model"),
        from_versions=None if froms is None else tuple(
            _version(f"{where}.from_versions", v) for v in froms),
    )


def parse_scenario(data: dict[str, Any]) -> Scenario:
    creds = data.get("credentials", {})
    server = data.get("server", {})
    devices = []
    for i, d in enumerate(data.get("devices", [])):
        where = f"devices[{i}]"
        devices.append(Registered(
            _int(f"{where}.dev_id", d.get("dev_id"), 1), d.get("manuf"), d.get("model"),
            _version(f"{where}.fota_version", d["fota_version"]) if d.get("fota_version")
            else None,
            _version(f"{where}.sota_version", d["sota_version"]) if d.get("sota_version")
            else None))
    packages: dict[str, Package] = {}
    for i, p in enumerate(data.get("packages", [])):
        where = f"packages[{i}]"
        kind = p.get("type", "full")
        if kind not in ("full", "diff"):
            raise ScenarioError(f"{where}.type: full or diff (got {kind!r})")
        if kind == "diff" and not p.get("from_version"):
            raise ScenarioError(f"{where}: a diff package needs from_version")
        pid = str(p.get("id", ""))
        if not pid:
            raise ScenarioError(f"{where}.id: required")
        packages[pid] = Package(
            pid, _version(f"{where}.version", p.get("version")),
            _int(f"{where}.size", p.get("size", 1024), 1, 512 * 1024 * 1024),
            _version(f"{where}.from_version", p["from_version"]) if kind == "diff" else None)
    tasks = tuple(_spec(f"tasks[{i}]", t, packages) for i, t in enumerate(data.get("tasks", [])))
    strategies = tuple(_spec(f"strategies[{i}]", t, packages)
                       for i, t in enumerate(data.get("strategies", [])))
    script = {_int("script key", int(k), 1): tuple(_int(f"script.{k}", e, 0, 99) for e in v)
              for k, v in data.get("script", {}).items()}
    download_errors = {}
    for k, v in data.get("download_errors", {}).items():
        if str(v) not in "123456" or len(str(v)) != 1:
            raise ScenarioError(f"download_errors.{k}: one digit 1-6 (got {v!r})")
        download_errors[_int("download_errors key", int(k), 1)] = str(v)
    f = data.get("faults", {})
    faults = Faults(float(f.get("errno7_rate", 0.0)), float(f.get("latency_ms", 0.0)),
                    float(f.get("drop_rate", 0.0)), f.get("seed"))
    for name in ("errno7_rate", "drop_rate"):
        if not 0.0 <= getattr(faults, name) <= 1.0:
            raise ScenarioError(f"faults.{name}: a rate in [0, 1]")
    return Scenario(
        product_id=str(creds.get("product_id", "100000")),
        access_key=creds.get("access_key"),
        auth=bool(creds.get("auth", True)),
        ip_port=server.get("ip_port"),
        auto_register=bool(server.get("auto_register", False)),
        devices=tuple(devices), packages=tuple(packages.values()), tasks=tasks,
        strategies=strategies, script=script, download_errors=download_errors, faults=faults,
    )


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: "
                            f"{exc}") from None
    try:
        return parse_scenario(data)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ScenarioError):
            raise ScenarioError(f"{p}: {exc}") from None
        raise ScenarioError(f"{p}: {type(exc).__name__}: {exc}") from None
