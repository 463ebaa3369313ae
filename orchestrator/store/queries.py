"""The store's SQL, read from ``sql/queries.sql`` (named blocks) and the numbered migrations
beside it. In a wheel the folder is packaged as ``orchestrator/sql``; in a source tree it
is the repository's top-level ``sql/``."""

from __future__ import annotations

import functools
import re
from pathlib import Path

_NAME = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError(f"no sql/queries.sql beside {here}")


def parse(text: str) -> dict[str, str]:
    """``-- name: X`` blocks → {X: statement}; a name given twice is an error."""
    parts = _NAME.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} defined twice")
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        out[name] = "\n".join(lines).strip().rstrip(";")
    return out


@functools.cache
def queries() -> dict[str, str]:
    return parse((sql_dir() / "queries.sql").read_text(encoding="utf-8"))


def q(name: str) -> str:
    """The named statement."""
    return queries()[name]
