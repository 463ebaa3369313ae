"""CSV device import: every bad row reported by line number; all-or-nothing by default."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

from orchestrator.domain.catalogue import UnknownModule, resolve
from orchestrator.domain.payloads import TEXT_MAX, StatusReport, parse_dev_id
from orchestrator.domain.versions import is_valid_version

COLUMNS = ("dev_id", "manuf", "model", "fota_version", "sota_version")


@dataclass
class ImportPlan:
    rows: list[StatusReport] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


def canonical_modules(reports: Sequence[StatusReport]
                      ) -> tuple[list[StatusReport], list[StatusReport]]:
    """Reports with their manufacturer and model as OneNET's tables name them (a device may
    report codes, or other case and spacing), and those whose module the tables do not know
    (kept as reported: the device is registered, and left out of campaigns)."""
    out: list[StatusReport] = []
    unknown: list[StatusReport] = []
    for r in reports:
        if r.manuf is None or r.model is None:
            out.append(r)
            continue
        try:
            module = resolve(r.manuf, r.model).module
        except UnknownModule:
            unknown.append(r)
            out.append(r)
            continue
        same = (module.manuf, module.model) == (r.manuf, r.model)
        out.append(r if same else msgspec.structs.replace(r, manuf=module.manuf,
                                                           model=module.model))
    return out, unknown


def parse_csv(text: str) -> ImportPlan:
    """Parse a device CSV with a header naming at least ``dev_id``."""
    plan = ImportPlan()
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "dev_id" not in header:
        plan.errors.append((1, f"header must name dev_id (columns: {', '.join(COLUMNS)})"))
        return plan
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        plan.errors.append((1, f"unknown column(s) {', '.join(unknown)}; known: "
                               f"{', '.join(COLUMNS)}"))
        return plan
    reader.fieldnames = header
    seen: dict[int, int] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            plan.errors.append((line, "more fields than the header"))
            continue
        values = {k: (v or "").strip() for k, v in row.items()}
        if not any(values.values()):
            continue
        dev_id = parse_dev_id(values.get("dev_id", ""))
        if dev_id is None:
            plan.errors.append((line, f"dev_id {values.get('dev_id')!r} is not a positive "
                                      "integer"))
            continue
        if dev_id in seen:
            plan.errors.append((line, f"dev_id {dev_id} already on line {seen[dev_id]}"))
            continue
        problems = []
        for key in ("fota_version", "sota_version"):
            if values.get(key) and not is_valid_version(values[key]):
                problems.append(f"{key} {values[key]!r} is not a valid version "
                                "(1-20 of A-Z a-z 0-9 _ - .)")
        manuf: str | None = values.get("manuf") or None
        model: str | None = values.get("model") or None
        for field_name, given in (("manuf", manuf), ("model", model)):
            if given and len(given) > TEXT_MAX:
                problems.append(f"{field_name} longer than {TEXT_MAX} characters")
        if manuf and model:
            try:
                # stored by name, whichever way the file gives it: a row imported as
                # "001,00107" is found by --model M5310 like the devices' own reports
                module = resolve(manuf, model).module
                manuf, model = module.manuf, module.model
            except UnknownModule as exc:
                problems.append(str(exc))
        elif manuf or model:
            problems.append("manuf and model go together")
        if problems:
            plan.errors.append((line, "; ".join(problems)))
            continue
        seen[dev_id] = line
        plan.rows.append(StatusReport(dev_id, manuf, model, values.get("fota_version") or None,
                                      values.get("sota_version") or None))
    return plan


@dataclass(frozen=True, slots=True)
class Device:
    dev_id: int
    manuf: str | None
    model: str | None
    fota_version: str | None
    sota_version: str | None
    signal: int | None
    power: int | None
    status_at: dt.datetime | None
    last_seen: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("status_at", "last_seen"):
            out[key] = out[key].isoformat() if out[key] else None
        return out
