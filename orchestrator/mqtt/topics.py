"""Topic names of the MQTT contract (section 3)."""

from __future__ import annotations


def status(prefix: str, dev_id: int | str = "+") -> str:
    return f"{prefix}/{dev_id}/status"


def progress(prefix: str, dev_id: int | str = "+") -> str:
    return f"{prefix}/{dev_id}/progress"


def command(prefix: str, dev_id: int | str = "+") -> str:
    return f"{prefix}/{dev_id}/command"


def shared(topic: str, group: str | None) -> str:
    return f"$share/{group}/{topic}" if group else topic


def refusal(granted: object) -> str | None:
    """Why a SUBACK refused the subscription, or None if it was granted. aiomqtt gives
    paho's reason codes (MQTT 5 and, from paho 2, 3.1.1 too) or granted QoS integers, where
    0x80 and above is a failure."""
    for code in granted if isinstance(granted, list | tuple) else [granted]:
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= 0x80:
            return str(code) if not isinstance(code, int) else f"code {value}"
    return None
