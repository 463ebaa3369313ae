"""Broker accounts, pure: secrets, their stored form, and the brokers' files made from it.

A secret is shown once and stored only as PBKDF2-HMAC-SHA512 over a salt. The stored form
is the one both brokers verify:

- Mosquitto's password file takes ``user:$7$<iterations>$<base64 salt>$<base64 hash>``
  (what ``mosquitto_passwd`` writes; Mosquitto 2.0 requires a 12-byte salt);
- EMQX's ``pbkdf2`` authenticator (``mac_fun = sha512``) takes the salt column as the salt's
  bytes and the hash as lowercase hex.

So the salt is 12 printable characters (71 bits from a 62-letter alphabet): the same bytes
whether Mosquitto decodes them from base64 or EMQX reads them as text.

The secret is 144 random bits. Key stretching protects guessable passwords, which these
are not: 101 iterations (``mosquitto_passwd``'s default) cost 60 us a hash here, so a
million accounts are provisioned in under a minute and a connecting device costs the
broker as little.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import secrets
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.domain.payloads import parse_dev_id

ITERATIONS = 101
SALT_LEN = 12
HASH_LEN = 64
SALT_ALPHABET = string.ascii_letters + string.digits
DEVICE = "device"
ORCHESTRATOR = "orchestrator"
ROLES = (DEVICE, ORCHESTRATOR)


def new_secret() -> str:
    """144 random bits, URL-safe (no ``:`` or ``,``: safe in a URL, CSV and a password file)."""
    return secrets.token_urlsafe(18)


def new_salt() -> str:
    return "".join(secrets.choice(SALT_ALPHABET) for _ in range(SALT_LEN))


def hash_secret(secret: str, salt: str, iterations: int = ITERATIONS) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", secret.encode(), salt.encode(), iterations, HASH_LEN)


def verify(secret: str, salt: str, digest: bytes, iterations: int = ITERATIONS) -> bool:
    return hmac.compare_digest(hash_secret(secret, salt, iterations), digest)


@dataclass(frozen=True, slots=True)
class Issued:
    """A new secret and its stored form: the secret goes to the operator once, the rest to
    the database."""

    username: str
    dev_id: int | None
    secret: str
    salt: str
    digest: bytes


def issue(username: str, dev_id: int | None = None, secret: str | None = None) -> Issued:
    secret, salt = secret or new_secret(), new_salt()
    return Issued(username, dev_id, secret, salt, hash_secret(secret, salt))


def issue_devices(dev_ids: Sequence[int]) -> list[Issued]:
    """Accounts for these devices (user name = the id): CPU-bound, run it in processes for
    large fleets."""
    return [issue(str(d), d) for d in dev_ids]


def emqx_hash(digest: bytes) -> str:
    """The ``password_hash`` column EMQX's pbkdf2 authenticator compares with."""
    return digest.hex()


def device_acl(prefix: str) -> str:
    """One ACL for every device: its own topics by user name (its listener makes the user
    name the client id, so the name is the device's own)."""
    return (f"# devices: each speaks only for itself (%u: its user name, which is its id)\n"
            f"pattern write {prefix}/%u/status\n"
            f"pattern write {prefix}/%u/progress\n"
            f"pattern read {prefix}/%u/command\n")


def orchestrator_acl(prefix: str, users: Iterable[str]) -> str:
    """The orchestrator's listener admits only its accounts; each may read every device's
    status and progress (directly or through a shared subscription, whatever the group)
    and publish commands."""
    out = ["# orchestrator replicas: ingest and commands"]
    for user in users:
        out += [f"user {user}", f"topic read {prefix}/+/status",
                f"topic read {prefix}/+/progress", f"topic write {prefix}/+/command"]
    return "\n".join(out) + "\n"


FILES = ("devices.passwd", "devices.acl", "orchestrators.passwd", "orchestrators.acl")


def mosquitto_conf(directory: str, *, devices_port: int = 1883,
                   orchestrator_port: int = 1884, bind: str | None = None,
                   data_dir: str | None = None, run_as: str | None = None,
                   log_stdout: bool = False, pid_file: str | None = None) -> str:
    """A Mosquitto configuration for a fleet: devices and orchestrator replicas on listeners
    of their own, each with the password and ACL files ``broker sync`` writes."""
    host = f" {bind}" if bind else ""
    persistence = (f"persistence true\npersistence_location {data_dir.rstrip('/')}/\n"
                   "autosave_interval 60\n") if data_dir else ""
    user = f"# started as root, Mosquitto runs as this user\nuser {run_as}\n" if run_as else ""
    logs = ("log_dest stdout\n" if log_stdout else "") + (
        f"# 'orchestrator broker sync --pid-file' signals the pid written here\n"
        f"pid_file {pid_file}\n" if pid_file else "")
    d = directory.rstrip("/")
    return f"""\
# Mosquitto for a fleet, written by 'orchestrator broker init'. Accounts live in PostgreSQL;
# 'orchestrator broker sync' writes the four files below from it and makes Mosquitto reload
# them (SIGHUP). Needs no plugin.
{user}per_listener_settings true

# Devices: every client authenticates; its client id is replaced by its user name (its id),
# so no device can connect as another, take its session or disconnect it; the ACL lets it
# publish only its own status and progress and read only its own commands.
listener {devices_port}{host}
allow_anonymous false
use_username_as_clientid true
password_file {d}/devices.passwd
acl_file {d}/devices.acl

# Orchestrator replicas: only their accounts, each replica with a client id of its own.
listener {orchestrator_port}{host}
allow_anonymous false
password_file {d}/orchestrators.passwd
acl_file {d}/orchestrators.acl

{persistence}# the orchestrator refuses device messages over 16 KiB; the broker refuses them earlier
message_size_limit 65536
# Queue up to this many QoS 1 messages for an offline or slow session (default 1000: a
# burst of reports from a few thousand devices would be dropped).
max_queued_messages 200000
max_queued_bytes 0
# No cap on messages in flight to one subscriber (0 = unlimited): the default of 20
# throttles ingest; the orchestrator bounds it itself with MQTT 5 Receive Maximum.
max_inflight_messages 0
# MQTT 3.1.1 sessions have no expiry of their own: drop them after a day
persistent_client_expiration 1d
{logs}"""


class AccountsInputError(ValueError):
    """A list of devices that cannot be used as given; the message names the lines."""


@dataclass
class IdList:
    ids: list[int] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


def parse_ids(text: str, *, limit_errors: int = 20) -> IdList:
    """Device ids, one a line, or a CSV whose header names ``dev_id`` (the credentials CSV
    itself is accepted). Blank lines and ``#`` comments are skipped; a bad or repeated id is
    an error naming its line."""
    out = IdList()
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    column: int | None = None
    start = 0
    if "," in first or first.strip() == "dev_id":
        header = next(csv.reader([first]))
        names = [h.strip() for h in header]
        if "dev_id" not in names:
            out.errors.append((lines.index(first) + 1,
                               "a CSV needs a header naming dev_id"))
            return out
        column = names.index("dev_id")
        start = lines.index(first) + 1
    seen: dict[int, int] = {}
    rows = csv.reader(io.StringIO("\n".join(lines[start:]))) if column is not None else (
        [ln] for ln in lines[start:])
    for offset, row in enumerate(rows):
        lineno = start + offset + 1
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if column is not None and len(row) <= column:
            out.errors.append((lineno, "no dev_id field"))
            continue
        raw = row[column if column is not None else 0].strip()
        dev_id = parse_dev_id(raw)
        if dev_id is None:
            out.errors.append((lineno, f"{raw[:30]!r} is not a device id"))
        elif dev_id in seen:
            out.errors.append((lineno, f"device {dev_id} already on line {seen[dev_id]}"))
        else:
            seen[dev_id] = lineno
            out.ids.append(dev_id)
        if len(out.errors) >= limit_errors:
            break
    return out


def parse_credentials(text: str) -> tuple[dict[int, str], list[tuple[int, str]]]:
    """The CSV ``device credentials`` writes (``dev_id,username,password``): {id: secret},
    and the bad lines."""
    out: dict[int, str] = {}
    errors: list[tuple[int, str]] = []
    reader = csv.DictReader(io.StringIO(text))
    if not {"dev_id", "password"} <= set(reader.fieldnames or ()):
        return out, [(1, "header must name dev_id and password (the CSV 'orchestrator device "
                         "credentials' writes)")]
    for row in reader:
        dev_id = parse_dev_id((row.get("dev_id") or "").strip())
        secret = (row.get("password") or "").strip()
        if dev_id is None or not secret:
            errors.append((reader.line_num, "a dev_id and a password"))
        elif dev_id in out:
            errors.append((reader.line_num, f"device {dev_id} given twice"))
        else:
            out[dev_id] = secret
    return out, errors
