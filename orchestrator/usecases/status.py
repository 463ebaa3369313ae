"""What the status page shows (read from the dashboards' stable views)."""

from __future__ import annotations

from orchestrator.store.status import page_data

__all__ = ["page_data"]
