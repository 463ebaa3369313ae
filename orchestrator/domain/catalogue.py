"""Manufacturer/model look-up against the seed's tables, by name or by code."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from orchestrator.domain._tables import MODULES, Module

__all__ = ["MODULES", "Module", "Resolved", "UnknownModule", "known_manuf", "known_model",
           "resolve"]


class UnknownModule(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Resolved:
    module: Module

    def manuf(self, send: str) -> str:
        return self.module.manuf_code if send == "code" else self.module.manuf

    def model(self, send: str) -> str:
        return self.module.model_code if send == "code" else self.module.model


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


_BY_NAME: dict[tuple[str, str], Module] = {}
_BY_CODE: dict[tuple[str, str], Module] = {}
for _m in MODULES:
    _BY_NAME.setdefault((_norm(_m.manuf), _norm(_m.model)), _m)
    _BY_CODE.setdefault((_m.manuf_code, _m.model_code), _m)
_MANUF_NAMES = {_norm(m.manuf) for m in MODULES}
_MANUF_CODES = {m.manuf_code for m in MODULES}


_MODEL_NAMES = {_norm(m.model) for m in MODULES}
_MODEL_CODES = {m.model_code for m in MODULES}


def known_manuf(text: str) -> bool:
    return _norm(text) in _MANUF_NAMES or text.strip() in _MANUF_CODES


def known_model(text: str) -> bool:
    return _norm(text) in _MODEL_NAMES or text.strip() in _MODEL_CODES


@functools.lru_cache(maxsize=1024)
def resolve(manuf: str, model: str) -> Resolved:
    """Find the table row for a manufacturer and model given by name or by code.

    Names compare case- and space-insensitively; codes exactly. A mixed pair (name with
    code) resolves too. Raises :class:`UnknownModule` naming what is not in the tables
    (never cached). Answers are cached, bounded: every device of a campaign asks the same.
    """
    key = (_norm(manuf), _norm(model))
    found = _BY_NAME.get(key) or _BY_CODE.get((manuf.strip(), model.strip()))
    if found is None:
        for m in MODULES:
            if (_norm(m.manuf) == key[0] or m.manuf_code == manuf.strip()) and (
                _norm(m.model) == key[1] or m.model_code == model.strip()
            ):
                found = m
                break
    if found is None:
        if key[0] not in _MANUF_NAMES and manuf.strip() not in _MANUF_CODES:
            raise UnknownModule(f"manufacturer {manuf!r} is not in the OneNET tables")
        raise UnknownModule(f"model {model!r} of {manuf!r} is not in the OneNET tables")
    return Resolved(found)
