"""Version strings as OneNET accepts them (errno 27 otherwise)."""

from __future__ import annotations

import re

VERSION_RE = re.compile(r"[A-Za-z0-9_\-.]{1,20}")


class BadVersion(ValueError):
    pass


def is_valid_version(value: object) -> bool:
    return isinstance(value, str) and VERSION_RE.fullmatch(value) is not None


def check_version(value: object, what: str = "version") -> str:
    """Return ``value`` when it is a valid version, else raise :class:`BadVersion`."""
    if not isinstance(value, str):
        raise BadVersion(f"{what}: expected a string, got {type(value).__name__}")
    if VERSION_RE.fullmatch(value) is None:
        raise BadVersion(
            f"{what}: {value[:40]!r} must be 1-20 characters of letters, digits, _ - ."
        )
    return value
