"""EMQX cannot run here (no package, no container engine): everything short of it. The
authenticator's query text, taken from deploy/emqx/emqx.conf, runs against the view the
way EMQX runs it (its ${...} placeholders become statement parameters), and the hash it
returns is verified the way EMQX's emqx_passwd does for pbkdf2: the PBKDF2 of the secret
over the salt column's bytes, with the configured mac_fun, iterations and dk_length,
compared as lowercase hex."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import asyncpg
import pytest

from conftest import run_cli

CONF = (Path(__file__).resolve().parents[2] / "deploy" / "emqx" / "emqx.conf").read_text()
ACL = (Path(__file__).resolve().parents[2] / "deploy" / "emqx" / "acl.conf").read_text()


def _setting(name: str) -> str:
    match = re.search(rf"^\s*{name}\s*=\s*(.+)$", CONF, re.MULTILINE)
    assert match, name
    return match[1].strip()


def emqx_statement() -> tuple[str, list[str]]:
    """The query as EMQX prepares it: each placeholder a parameter, in order of appearance."""
    query = json.loads(_setting("query"))
    names: list[str] = []

    def param(m: re.Match[str]) -> str:
        if m[1] not in names:
            names.append(m[1])
        return f"${names.index(m[1]) + 1}"

    return re.sub(r"\$\{(\w+)\}", param, query), names


def emqx_check(secret: str, row: asyncpg.Record) -> bool:
    """emqx_passwd:check_pass({pbkdf2, MacFun, Salt, Iterations, DKLength}, Hash, Password)."""
    digest = hashlib.pbkdf2_hmac(_setting("mac_fun"), secret.encode(), row["salt"].encode(),
                                 int(_setting("iterations")), int(_setting("dk_length")))
    return digest.hex() == row["password_hash"]


async def test_emqx_authenticates_against_the_view(database: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(database)
    await conn.execute("INSERT INTO ota.devices (dev_id) VALUES (11), (12)")
    env = {**os.environ, "ORCH_DATABASE_URL": database, "ORCH_LOG_FORMAT": "json"}
    out = run_cli("device", "credentials", "11", "12", "--json", env=env)
    assert out.returncode == 0, out.stderr
    secret = {int(r["dev_id"]): r["password"] for r in json.loads(out.stdout)}
    out = run_cli("broker", "init", "--dir", str(tmp_path), "--user", "orchestrator", env=env)
    assert out.returncode == 0, out.stderr
    orch_secret = out.stdout.strip().split("://", 1)[1].split("@")[0].split(":")[1]
    query, names = emqx_statement()
    assert names == ["username", "clientid"]
    assert _setting("name") == "pbkdf2" and _setting("backend") == "postgresql"

    async def lookup(username: str, clientid: str) -> asyncpg.Record | None:
        values = {"username": username, "clientid": clientid}
        return await conn.fetchrow(query, *(values[n] for n in names))

    row = await lookup("11", "11")
    assert row is not None and set(row.keys()) == {"password_hash", "salt", "is_superuser"}
    assert emqx_check(secret[11], row) and not emqx_check(secret[12], row)
    assert row["is_superuser"] is False
    # a device claiming another's client id, or a made-up one, finds no account
    assert await lookup("11", "12") is None and await lookup("11", "11-x") is None
    assert await lookup("13", "13") is None
    # a replica: its account name, a dash, its slot
    orch = await lookup("orchestrator", "orchestrator-host-0")
    assert orch is not None and orch["is_superuser"] is True and emqx_check(orch_secret, orch)
    assert await lookup("orchestrator", "11") is None
    # revoked: no row at the next connect, no sync needed
    assert run_cli("device", "revoke", "11", env=env).returncode == 0
    assert await lookup("11", "11") is None
    plan = await conn.fetch("EXPLAIN " + query, "12", "12")
    assert "Index Scan" in "\n".join(r[0] for r in plan)
    await conn.close()


def test_the_device_rules_name_only_the_devices_own_topics() -> None:
    rules = [ln for ln in ACL.splitlines() if ln.startswith("{")]
    assert rules[-1] == "{deny, all}."
    topics = re.findall(r'"([^"]+)"', "\n".join(rules))
    assert topics and all("${username}" in t for t in topics)
    assert not any("+" in t or "#" in t for t in topics)


@pytest.mark.parametrize("key", ["mechanism", "backend", "query"])
def test_the_conf_names_what_emqx_needs(key: str) -> None:
    assert _setting(key)
