"""Campaign queries: creation and set-based enrolment, status changes, claims, batched
writes of decisions, kept counts. Rows become typed values here and nowhere else."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.domain.engine import IN_FLIGHT, TERMINAL, DeviceRow, Status
from orchestrator.domain.onenet import Task
from orchestrator.domain.rollout import Counts, Rules, check_waves, wave_bounds
from orchestrator.domain.versions import check_version

NON_TERMINAL = ["pending", "checking", "gated", "dispatched", "downloading",
                            "upgrading"]
CAMPAIGN_DONE = ("completed", "cancelled", "aborted")


class CampaignError(ValueError):
    """An operator's request that cannot be done (bad field)."""


class CampaignNotFound(CampaignError):
    pass


class CampaignConflict(CampaignError):
    """The campaign's status does not allow the action."""


@dataclass(frozen=True, slots=True)
class Selector:
    manuf: str | None = None
    model: str | None = None
    from_versions: tuple[str, ...] = ()
    devices: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.manuf:
            out["manuf"] = self.manuf
        if self.model:
            out["model"] = self.model
        if self.from_versions:
            out["from_versions"] = list(self.from_versions)
        if self.devices is not None:
            out["devices"] = list(self.devices)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selector:
        devices = data.get("devices")
        return cls(data.get("manuf"), data.get("model"), tuple(data.get("from_versions", ())),
                   None if devices is None else tuple(devices))


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    name: str
    type: str
    target: str
    selector: Selector = field(default_factory=Selector)
    waves: tuple[int, ...] = (100,)
    wave_success_pct: float = 0.0
    max_per_minute: int | None = None
    abort_failure_pct: float | None = None
    abort_min_finished: int = 1
    continuous: bool = False

    def validate(self) -> None:
        if not self.name.strip() or len(self.name) > 200:
            raise CampaignError("name: 1-200 characters")
        if self.type not in ("fota", "sota"):
            raise CampaignError(f"type: fota or sota (got {self.type!r})")
        try:
            check_version(self.target, "target")
            for v in self.selector.from_versions:
                check_version(v, "from_version")
        except ValueError as exc:
            raise CampaignError(str(exc)) from None
        try:
            check_waves(self.waves)
        except ValueError as exc:
            raise CampaignError(str(exc)) from None
        if not 0 <= self.wave_success_pct <= 100:
            raise CampaignError("wave_success_pct: 0..100")
        if self.max_per_minute is not None and self.max_per_minute <= 0:
            raise CampaignError("max_per_minute: > 0")
        if self.abort_failure_pct is not None and not 0 <= self.abort_failure_pct <= 100:
            raise CampaignError("abort_failure_pct: 0..100")
        if self.abort_min_finished < 1:
            raise CampaignError("abort_min_finished: >= 1")


@dataclass(frozen=True, slots=True)
class Campaign:
    campaign_id: int
    name: str
    status: str
    type: str
    target_version: str
    selector: dict[str, Any]
    waves: list[int]
    wave_success_pct: float
    current_wave: int
    max_per_minute: int | None
    abort_failure_pct: float | None
    abort_min_finished: int
    continuous: bool
    status_reason: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    counts: Counts = field(default_factory=Counts)

    @property
    def rules(self) -> Rules:
        return Rules(tuple(self.waves), self.wave_success_pct, self.abort_failure_pct,
                     self.abort_min_finished, self.continuous)

    def to_json(self, *, with_devices: bool = False) -> dict[str, Any]:
        """The campaign with its counts flat, as in ``ota.campaign_progress``."""
        out = asdict(self)
        counts = out.pop("counts")
        out.update(total=self.counts.total, **counts)
        for key in ("created_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        sel = dict(out["selector"])
        if "devices" in sel and not with_devices:
            sel["devices"] = f"{len(sel['devices'])} listed"
        out["selector"] = sel
        return out


_CAMPAIGN_COLS = """c.campaign_id, c.name, c.status, c.type, c.target_version, c.selector,
    c.waves, c.wave_success_pct::float8 AS wave_success_pct, c.current_wave, c.max_per_minute,
    c.abort_failure_pct::float8 AS abort_failure_pct, c.abort_min_finished, c.continuous,
    c.status_reason, c.created_at, c.started_at, c.finished_at,
    p.total, p.pending, p.in_progress, p.succeeded, p.failed, p.no_task, p.cancelled"""


_COUNT_COLS = ("pending", "in_progress", "succeeded", "failed", "no_task", "cancelled")


def _campaign(row: Any) -> Campaign:
    fields = dict(row)
    counts = Counts(**{k: fields.pop(k) for k in _COUNT_COLS})
    fields.pop("total")   # derived: the sum of the counts
    return Campaign(**fields, counts=counts)


async def get_campaign(conn: Any, campaign_id: int) -> Campaign | None:
    row = await conn.fetchrow(
        f"SELECT {_CAMPAIGN_COLS} FROM ota.campaigns c JOIN ota.campaign_progress p"
        " USING (campaign_id) WHERE c.campaign_id = $1", campaign_id)
    return _campaign(row) if row else None


async def list_campaigns(conn: Any, status: str | None = None, limit: int = 100) -> list[Campaign]:
    rows = await conn.fetch(
        f"SELECT {_CAMPAIGN_COLS} FROM ota.campaigns c JOIN ota.campaign_progress p"
        " USING (campaign_id) WHERE ($1::text IS NULL OR c.status = $1)"
        " ORDER BY c.campaign_id DESC LIMIT $2", status, limit)
    return [_campaign(r) for r in rows]


async def event(conn: Any, kind: str, reason: str, *, campaign_id: int | None = None,
                dev_id: int | None = None, from_state: str | None = None,
                to_state: str | None = None, actor: str = "orchestrator",
                detail: dict[str, Any] | None = None) -> None:
    await conn.execute(
        "INSERT INTO ota.events (campaign_id, dev_id, kind, from_state, to_state, reason,"
        " actor, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        campaign_id, dev_id, kind, from_state, to_state, reason, actor, detail)


_VERSION_COL = {"fota": "d.fota_version", "sota": "d.sota_version"}


def _selection(kind: str, fresh: bool = False) -> str:
    """The devices a selector picks; ``fresh``: the campaign has no devices yet."""
    version = _VERSION_COL[kind]
    not_yet = " AND $1::bigint IS NOT NULL" if fresh else """
          AND NOT EXISTS (SELECT 1 FROM ota.campaign_devices x
                          WHERE x.campaign_id = $1 AND x.dev_id = d.dev_id)"""
    return f"""
        FROM ota.devices d
        WHERE ($2::text IS NULL OR d.manuf = $2)
          AND ($3::text IS NULL OR d.model = $3)
          AND (cardinality($4::text[]) = 0 OR {version} = ANY($4))
          AND ($5::bigint[] IS NULL OR d.dev_id = ANY($5))
          AND {version} IS DISTINCT FROM $6{not_yet}"""


async def enroll(conn: Any, campaign_id: int, kind: str, target: str, sel: Selector,
                 waves: Sequence[int] | None, wave: int | None = None,
                 fresh: bool = False) -> int:
    """Enrol every matching device not yet in the campaign, in one set-based statement.

    With ``waves`` devices are spread over waves by a hash of their id (so the first 1% is a
    sample of the fleet); with ``wave`` they all join that wave (continuous campaigns)."""
    args = [campaign_id, sel.manuf, sel.model, list(sel.from_versions),
            None if sel.devices is None else list(sel.devices), target]
    if waves is not None:
        total = await conn.fetchval(f"SELECT count(*) {_selection(kind, fresh)}", *args)
        bounds = wave_bounds(total, waves)
        await conn.execute("UPDATE ota.campaigns SET wave_bounds = $2 WHERE campaign_id = $1",
                           campaign_id, bounds)
        wave_expr = f"least(width_bucket(rn, $7::bigint[]), {len(waves) - 1})"
        extra: list[Any] = [bounds]
    else:
        wave_expr = "$7::int"
        extra = [wave or 0]
    status = await conn.execute(f"""
        INSERT INTO ota.campaign_devices (campaign_id, dev_id, wave, next_attempt_at)
        SELECT $1, dev_id, {wave_expr}, now()
        FROM (SELECT d.dev_id, row_number() OVER (ORDER BY hashint8(d.dev_id), d.dev_id) - 1
                  AS rn {_selection(kind, fresh)}) ranked
        ORDER BY dev_id  -- index order: random-order B-tree inserts cost twice as much
        {"" if fresh else "ON CONFLICT DO NOTHING"}""", *args, *extra)
    return int(status.split()[-1])


async def create_campaign(conn: Any, spec: CampaignSpec, *, start: bool = False,
                          actor: str = "cli") -> int:
    """Create a campaign and enrol its devices (one transaction)."""
    spec.validate()
    async with conn.transaction():
        if spec.selector.devices is not None:
            missing = await conn.fetchval(
                "SELECT array_agg(x ORDER BY x) FROM unnest($1::bigint[]) x"
                " WHERE NOT EXISTS (SELECT 1 FROM ota.devices d WHERE d.dev_id = x)",
                list(spec.selector.devices))
            if missing:
                shown = ", ".join(str(m) for m in missing[:10])
                raise CampaignError(f"devices: {len(missing)} listed device(s) are not in the "
                                    f"registry: {shown}{' ...' if len(missing) > 10 else ''}")
        cid = await conn.fetchval(
            """INSERT INTO ota.campaigns (name, type, target_version, selector, waves,
                   wave_success_pct, max_per_minute, abort_failure_pct, abort_min_finished,
                   continuous, rate_tokens)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING campaign_id""",
            spec.name, spec.type, spec.target, spec.selector.to_json(), list(spec.waves),
            spec.wave_success_pct, spec.max_per_minute, spec.abort_failure_pct,
            spec.abort_min_finished, spec.continuous,
            0.0 if spec.max_per_minute is None else max(1.0, spec.max_per_minute / 12.0))
        n = await enroll(conn, cid, spec.type, spec.target, spec.selector, spec.waves,
                         fresh=True)
        await event(conn, "campaign_created", f"{n} device(s) enrolled", campaign_id=cid,
                    actor=actor, to_state="draft")
        if start:
            await set_status(conn, cid, "start", actor=actor)
    return int(cid)


_ALLOWED = {
    "start": (("draft",), "running"),
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "cancel": (("draft", "running", "paused"), "cancelled"),
}


async def set_status(conn: Any, campaign_id: int, action: str, *, actor: str = "cli",
                     reason: str | None = None) -> Campaign:
    """Start, pause, resume or cancel. Cancel moves every open device to ``cancelled`` and
    queues ``{"op": "cancel"}`` for those in flight (outbox, same transaction)."""
    allowed, new = _ALLOWED[action]
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT status FROM ota.campaigns WHERE campaign_id = $1 FOR UPDATE", campaign_id)
        if row is None:
            raise CampaignNotFound(f"campaign {campaign_id} not found")
        if row["status"] not in allowed:
            raise CampaignConflict(f"campaign {campaign_id} is {row['status']}: cannot {action}")
        await conn.execute(
            """UPDATE ota.campaigns SET status = $2, status_reason = $3, updated_at = now(),
                   started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now())
                                     ELSE started_at END,
                   finished_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE finished_at END
               WHERE campaign_id = $1""", campaign_id, new, reason)
        if new == "cancelled":
            await conn.execute(
                """INSERT INTO ota.outbox (dev_id, payload)
                   SELECT dev_id, jsonb_build_object('op', 'cancel', 'campaign', campaign_id)
                   FROM ota.campaign_devices
                   WHERE campaign_id = $1 AND state = ANY($2) ORDER BY dev_id""",
                campaign_id, list(IN_FLIGHT))
            await conn.execute(
                """UPDATE ota.campaign_devices SET state = 'cancelled', next_attempt_at = NULL,
                       rev = rev + 1, updated_at = now()
                   WHERE campaign_id = $1 AND state <> ALL($2)""", campaign_id, list(TERMINAL))
        await event(conn, f"campaign_{action}", reason or f"{action} by {actor}",
                    campaign_id=campaign_id, from_state=row["status"], to_state=new,
                    actor=actor)
    campaign = await get_campaign(conn, campaign_id)
    assert campaign is not None
    return campaign


# --- claims and batched decisions -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Claimed:
    campaign_id: int
    dev_id: int
    rev: int
    wave: int
    row: DeviceRow
    manuf: str | None
    model: str | None
    version: str | None
    status: Status


def _ts(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _to_dt(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def device_row(r: Any) -> DeviceRow:
    task = r["task"]
    return DeviceRow(
        state=r["state"], attempts=r["attempts"], transient_errors=r["transient_errors"],
        next_attempt_at=_ts(r["next_attempt_at"]), last_errno=r["last_errno"],
        last_step=r["last_step"], last_error=r["last_error"],
        task=Task.from_json(task) if task else None,
        token_expires_at=_ts(r["token_expires_at"]), dispatched_at=_ts(r["dispatched_at"]),
        report_asked_at=_ts(r["report_asked_at"]))


_ROW_COLS = """cd.campaign_id, cd.dev_id, cd.rev, cd.wave, cd.state, cd.attempts,
    cd.transient_errors, cd.next_attempt_at, cd.last_errno, cd.last_step, cd.last_error,
    cd.task, cd.token_expires_at, cd.dispatched_at, cd.report_asked_at"""


async def claim(conn: Any, campaign_id: int, current_wave: int, limit: int, lease: float,
                owner: str) -> list[Claimed]:
    """Claim up to ``limit`` due devices (SKIP LOCKED) and lease them: their due time moves
    ``lease`` seconds ahead, so a crashed replica's claims come back by themselves."""
    if limit <= 0:
        return []
    rows = await conn.fetch(f"""
        WITH due AS (
            SELECT campaign_id, dev_id FROM ota.campaign_devices
            WHERE campaign_id = $1 AND state = ANY($2) AND next_attempt_at <= now()
              AND wave <= $3
            ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE ota.campaign_devices cd
            SET next_attempt_at = now() + make_interval(secs => $5), lease_owner = $6,
                lease_until = now() + make_interval(secs => $5),
                state = CASE WHEN cd.state IN ('pending', 'gated') THEN 'checking'
                             ELSE cd.state END,
                rev = cd.rev + 1
            FROM due WHERE cd.campaign_id = due.campaign_id AND cd.dev_id = due.dev_id
            RETURNING {_ROW_COLS}
        )
        SELECT cd.*, c.type, d.manuf, d.model, d.fota_version, d.sota_version, d.signal,
               d.power, d.status_at
        FROM claimed cd JOIN ota.devices d USING (dev_id)
        JOIN ota.campaigns c USING (campaign_id)
        ORDER BY cd.dev_id""",
        campaign_id, NON_TERMINAL, current_wave, limit, lease, owner)
    out = []
    for r in rows:
        out.append(Claimed(
            r["campaign_id"], r["dev_id"], r["rev"], r["wave"], device_row(r), r["manuf"],
            r["model"], r["fota_version"] if r["type"] == "fota" else r["sota_version"],
            Status(r["signal"], r["power"], _ts(r["status_at"]))))
    return out


@dataclass(frozen=True, slots=True)
class Write:
    """One decided row to write, guarded by the revision it was read at."""

    campaign_id: int
    dev_id: int
    rev: int
    old_state: str
    row: DeviceRow
    reason: str


async def lock_rows(conn: Any, keys: Sequence[tuple[int, int]]) -> None:
    """Lock campaign_devices rows in key order, so concurrent writers never deadlock."""
    keys = sorted(set(keys))
    await conn.execute(
        """SELECT 1 FROM ota.campaign_devices cd
           JOIN unnest($1::bigint[], $2::bigint[]) AS k(c, d)
             ON cd.campaign_id = k.c AND cd.dev_id = k.d
           ORDER BY cd.campaign_id, cd.dev_id FOR UPDATE OF cd""",
        [k[0] for k in keys], [k[1] for k in keys])


async def write_rows(conn: Any, writes: Sequence[Write], actor: str) -> set[tuple[int, int]]:
    """Write decisions whose row is unchanged since read (same rev); append their events.
    Returns the keys written."""
    if not writes:
        return set()
    writes = sorted(writes, key=lambda w: (w.campaign_id, w.dev_id))
    await lock_rows(conn, [(w.campaign_id, w.dev_id) for w in writes])
    rows = await conn.fetch(
        """UPDATE ota.campaign_devices cd SET
               state = u.state, attempts = u.attempts, transient_errors = u.te,
               next_attempt_at = u.next, last_errno = u.errno, last_step = u.step,
               last_error = u.err, task = u.task, token_expires_at = u.tok,
               dispatched_at = u.disp, report_asked_at = u.rep, lease_owner = NULL,
               lease_until = NULL, rev = cd.rev + 1, updated_at = now()
           FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[], $5::int[],
                       $6::int[], $7::timestamptz[], $8::int[], $9::int[], $10::text[],
                       $11::jsonb[], $12::timestamptz[], $13::timestamptz[],
                       $14::timestamptz[])
                AS u(cid, did, rev, state, attempts, te, next, errno, step, err, task, tok,
                     disp, rep)
           WHERE cd.campaign_id = u.cid AND cd.dev_id = u.did AND cd.rev = u.rev
           RETURNING cd.campaign_id, cd.dev_id""",
        [w.campaign_id for w in writes], [w.dev_id for w in writes], [w.rev for w in writes],
        [w.row.state for w in writes], [w.row.attempts for w in writes],
        [w.row.transient_errors for w in writes], [_to_dt(w.row.next_attempt_at) for w in writes],
        [w.row.last_errno for w in writes], [w.row.last_step for w in writes],
        [w.row.last_error for w in writes],
        [w.row.task.to_json() if w.row.task else None for w in writes],
        [_to_dt(w.row.token_expires_at) for w in writes],
        [_to_dt(w.row.dispatched_at) for w in writes],
        [_to_dt(w.row.report_asked_at) for w in writes])
    written = {(r["campaign_id"], r["dev_id"]) for r in rows}
    done = [w for w in writes if (w.campaign_id, w.dev_id) in written]
    await append_events(conn, done, actor)
    return written


async def append_events(conn: Any, writes: Iterable[Write], actor: str) -> None:
    ws = list(writes)
    if not ws:
        return
    await conn.execute(
        """INSERT INTO ota.events (campaign_id, dev_id, kind, from_state, to_state, reason,
                                   actor, detail)
           SELECT c, d, 'transition', f, t, r, $7, CASE WHEN e IS NULL AND s IS NULL THEN NULL
                  ELSE jsonb_strip_nulls(jsonb_build_object('errno', e, 'step', s)) END
           FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                       $6::int[], $8::int[]) AS u(c, d, f, t, r, e, s)""",
        [w.campaign_id for w in ws], [w.dev_id for w in ws], [w.old_state for w in ws],
        [w.row.state for w in ws], [w.reason for w in ws], [w.row.last_errno for w in ws],
        actor, [w.row.last_step for w in ws])


async def count_checks(conn: Any, counts: Counter[tuple[int, int]]) -> None:
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(
        """INSERT INTO ota.check_counts AS k (campaign_id, errno, calls)
           SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[]) ORDER BY 1, 2
           ON CONFLICT (campaign_id, errno) DO UPDATE SET calls = k.calls + EXCLUDED.calls""",
        [k[0] for k in keys], [k[1] for k in keys], [counts[k] for k in keys])


async def read_rows(conn: Any, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """Lock and read rows (with their campaign's type and target) for an ingest batch."""
    keys = sorted(set(keys))
    rows = await conn.fetch(
        f"""SELECT {_ROW_COLS}, c.type, c.target_version
            FROM ota.campaign_devices cd
            JOIN unnest($1::bigint[], $2::bigint[]) AS k(c, d)
              ON cd.campaign_id = k.c AND cd.dev_id = k.d
            JOIN ota.campaigns c ON c.campaign_id = cd.campaign_id
            ORDER BY cd.campaign_id, cd.dev_id FOR UPDATE OF cd""",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["campaign_id"], r["dev_id"]): r for r in rows}


# --- controller -----------------------------------------------------------------------------

async def fold_counts(conn: Any) -> None:
    """Move pending count deltas into campaign_counts (one statement)."""
    await conn.execute("""
        WITH moved AS (DELETE FROM ota.campaign_count_deltas RETURNING *)
        INSERT INTO ota.campaign_counts AS k (campaign_id, wave, state, n)
        SELECT campaign_id, wave, state, sum(n) FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (campaign_id, wave, state) DO UPDATE SET n = k.n + EXCLUDED.n""")


async def counts_by_wave(conn: Any, campaign_id: int) -> dict[int, Counts]:
    rows = await conn.fetch(
        "SELECT wave, state, n FROM ota.campaign_state_counts WHERE campaign_id = $1",
        campaign_id)
    by: dict[int, dict[str, int]] = {}
    for r in rows:
        by.setdefault(r["wave"], {})[r["state"]] = int(r["n"])
    return {w: Counts.from_states(states) for w, states in by.items()}


async def device_progress(conn: Any, campaign_id: int, state: str | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT dev_id, state, attempts, last_errno, last_step, next_attempt_at, updated_at
           FROM ota.device_progress WHERE campaign_id = $1 AND ($2::text IS NULL OR state = $2)
           ORDER BY dev_id LIMIT $3""", campaign_id, state, limit)
    return [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items()}
            for r in rows]
