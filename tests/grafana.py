"""The board's panels and Grafana's macros, for the tests (one definition, in the tools)."""

from orchestrator.tools.grafana import BOARD, ROOT, grafana_sql, panels

__all__ = ["BOARD", "ROOT", "grafana_sql", "panels"]
