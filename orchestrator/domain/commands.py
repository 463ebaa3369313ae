"""Building the MQTT commands of the contract from decisions (pure)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from orchestrator.domain.onenet import DIFF_PACKAGE, Task


def download_url(template: str, task: Task, onenet_url: str) -> str:
    """The absolute package URL: the task's ``ipPort`` (or the OneNET host when the answer
    has none) and its token, through the configured template."""
    ip_port = task.ip_port or urlsplit(onenet_url).netloc
    return template.format(ipPort=ip_port, token=task.token)


def upgrade_command(campaign_id: int, kind: str, task: Task, url: str,
                    expires_at: float | None, attempt: str | None = None) -> dict[str, Any]:
    """``attempt``: the dispatch's id, which the device echoes in its progress."""
    return {
        "op": "upgrade", "campaign": campaign_id, "attempt": attempt, "type": kind,
        "target": task.target,
        "url": url, "size": task.size, "md5": task.md5,
        "package": "diff" if task.type == DIFF_PACKAGE else "full",
        "retry": task.retry, "interval": task.interval,
        "expires_at": int(expires_at) if expires_at is not None else None,
    }


def report_command() -> dict[str, Any]:
    return {"op": "report"}


def cancel_command(campaign_id: int) -> dict[str, Any]:
    return {"op": "cancel", "campaign": campaign_id}
