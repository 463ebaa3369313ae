"""Turning an API body into a :class:`CampaignSpec`, naming the field that is wrong."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.campaign import (
    DEFAULT_UNREACHABLE_AFTER,
    CampaignError,
    CampaignSpec,
    Selector,
)

FIELDS = {"name", "type", "target", "manuf", "model", "from_versions", "devices", "waves",
          "wave_success_pct", "max_per_minute", "abort_failure_pct", "abort_min_finished",
          "continuous", "start", "abort_action", "all_devices", "dispatch_timeout", "canary",
          "unreachable_after", "max_in_flight", "windows", "timezone"}


def _opt(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise CampaignError(f"{key}: expected {what}")
    if not isinstance(value, kinds):
        raise CampaignError(f"{key}: expected {what}, got {type(value).__name__}")
    return value


def _int_list(body: dict[str, Any], key: str) -> list[int] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int)
                                          for v in value):
        raise CampaignError(f"{key}: expected a list of integers")
    return value


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CampaignError(f"{key}: expected a list of strings")
    return value


def spec_from_body(body: Any) -> tuple[CampaignSpec, bool]:
    if not isinstance(body, dict):
        raise CampaignError("body: expected a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise CampaignError(f"{unknown[0]}: unknown field (known: {', '.join(sorted(FIELDS))})")
    for key in ("name", "type", "target"):
        if not isinstance(body.get(key), str):
            raise CampaignError(f"{key}: required string")
    froms = _str_list(body, "from_versions")
    devices = _int_list(body, "devices")
    if devices is not None and any(d <= 0 for d in devices):
        raise CampaignError("devices: ids must be positive")
    waves = _int_list(body, "waves") or [100]
    num = (int, float)
    abort = _opt(body, "abort_failure_pct", num, "a number")
    spec = CampaignSpec(
        name=body["name"], type=body["type"], target=body["target"],
        selector=Selector(_opt(body, "manuf", (str,), "a string"),
                          _opt(body, "model", (str,), "a string"), tuple(froms),
                          None if devices is None else tuple(devices)),
        waves=tuple(waves),
        wave_success_pct=float(_opt(body, "wave_success_pct", num, "a number") or 0.0),
        max_per_minute=_opt(body, "max_per_minute", (int,), "an integer"),
        abort_failure_pct=None if abort is None else float(abort),
        abort_min_finished=_opt(body, "abort_min_finished", (int,), "an integer") or 1,
        continuous=bool(_opt(body, "continuous", (bool,), "a boolean") or False),
        abort_action=_opt(body, "abort_action", (str,), "a string") or "pause",
        all_devices=bool(_opt(body, "all_devices", (bool,), "a boolean") or False),
        dispatch_timeout=_opt(body, "dispatch_timeout", (int, float), "a number"),
        canary=_opt(body, "canary", (int,), "an integer"),
        unreachable_after=_or(_opt(body, "unreachable_after", (int, float), "a number"),
                              DEFAULT_UNREACHABLE_AFTER),
        max_in_flight=_opt(body, "max_in_flight", (int,), "an integer"),
        windows=tuple(_str_list(body, "windows")),
        timezone=_opt(body, "timezone", (str,), "a string") or "UTC",
    )
    spec.validate()
    return spec, bool(_opt(body, "start", (bool,), "a boolean") or False)
