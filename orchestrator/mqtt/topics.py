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
