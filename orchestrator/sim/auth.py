"""The platform's side of OneNET's Authorization token: only the simulator checks tokens."""

from __future__ import annotations

import hmac

from orchestrator.domain.onenet import ESCAPES, SIGN_METHODS, TOKEN_VERSION, sign


def unquote_value(value: str) -> str:
    out = value
    for char, code in ESCAPES.items():
        if char != "%":
            out = out.replace(code, char).replace(code.lower(), char)
    return out.replace("%25", "%")


def _fields(header: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in header.split("&"):
        key, _, value = part.partition("=")
        fields[key] = unquote_value(value)
    return fields


def expiry_of(header: str) -> int:
    """The ``et`` of a token :func:`verify_authorization` accepted."""
    return int(_fields(header)["et"])


def verify_authorization(header: str | None, product_id: str, access_key: str,
                         now: float) -> bool:
    """The platform's side: a well-formed, unexpired token signed with this product's key."""
    if not header:
        return False
    try:
        fields = _fields(header)
        et = int(fields["et"])
        method = fields["method"]
        if fields.get("version") != TOKEN_VERSION or fields["res"] != f"products/{product_id}":
            return False
        if et < now or method not in SIGN_METHODS:
            return False
        expected = sign(access_key, fields["res"], et, method)
        return hmac.compare_digest(expected, fields["sign"])
    except (KeyError, ValueError):
        return False
