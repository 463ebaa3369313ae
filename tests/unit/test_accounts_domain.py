"""Broker accounts, pure: the stored form both brokers verify, id lists, the CSV of secrets,
the files' text, and SUBACK refusals."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from orchestrator.domain.accounts import (
    HASH_LEN,
    ITERATIONS,
    SALT_ALPHABET,
    SALT_LEN,
    device_acl,
    emqx_hash,
    hash_secret,
    issue,
    mosquitto_conf,
    new_secret,
    orchestrator_acl,
    parse_credentials,
    parse_ids,
    verify,
)
from orchestrator.mqtt.topics import refusal


def test_the_stored_form_is_pbkdf2_sha512_over_a_printable_salt() -> None:
    i = issue("6523", 6523)
    assert len(i.salt) == SALT_LEN and set(i.salt) <= set(SALT_ALPHABET)
    assert i.digest == hashlib.pbkdf2_hmac("sha512", i.secret.encode(), i.salt.encode(),
                                           ITERATIONS, HASH_LEN)
    assert verify(i.secret, i.salt, i.digest) and not verify(i.secret + "x", i.salt, i.digest)
    # Mosquitto 2.0 decodes the $7$ salt from base64 and wants 12 bytes: the same 12 bytes
    # EMQX reads from the salt column as text
    assert len(base64.b64decode(base64.b64encode(i.salt.encode()))) == 12
    assert emqx_hash(i.digest) == i.digest.hex() and emqx_hash(i.digest).islower()


def test_secrets_are_long_random_and_safe_in_csv_urls_and_password_files() -> None:
    secrets = {new_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    assert all(len(s) == 24 and not set(s) & set(":,@/$\n ") for s in secrets)


def test_a_known_vector() -> None:
    # PBKDF2-HMAC-SHA512 is what both brokers compute; a fixed vector guards the parameters
    digest = hash_secret("secret", "abcdefghijkl")
    assert digest[:8].hex() == hashlib.pbkdf2_hmac(
        "sha512", b"secret", b"abcdefghijkl", 101, 64)[:8].hex()


@given(st.lists(st.integers(1, 2**63 - 1), unique=True, max_size=30))
def test_ids_one_a_line_or_as_csv(ids: list[int]) -> None:
    plain = parse_ids("\n".join(map(str, ids)))
    csv = parse_ids("dev_id,username,password\n" + "".join(f"{i},{i},pw\n" for i in ids))
    assert plain.ids == ids and csv.ids == ids and not plain.errors and not csv.errors


def test_bad_ids_name_their_lines() -> None:
    got = parse_ids("# fleet A\n1\n2\n\n2\nabc\n007\n-3\n")
    assert got.ids == [1, 2]
    assert got.errors == [(5, "device 2 already on line 3"), (6, "'abc' is not a device id"),
                          (7, "'007' is not a device id"), (8, "'-3' is not a device id")]
    assert parse_ids("name,model\nx,y\n").errors == [(1, "a CSV needs a header naming dev_id")]
    assert parse_ids("\x00\x01binary").errors[0][1].endswith("is not a device id")


def test_the_credentials_csv_reads_back() -> None:
    ok, errors = parse_credentials("dev_id,username,password\n1,1,a\n2,2,b\n")
    assert ok == {1: "a", 2: "b"} and not errors
    _, errors = parse_credentials("dev_id,username,password\n1,1,a\n1,1,b\nx,x,\n")
    assert errors == [(3, "device 1 given twice"), (4, "a dev_id and a password")]
    assert parse_credentials("id;pw\n1;2\n")[1][0][0] == 1


def test_the_acls_bind_devices_to_their_own_topics() -> None:
    acl = device_acl("ota")
    assert "pattern write ota/%u/status" in acl and "pattern read ota/%u/command" in acl
    rules = [ln for ln in acl.splitlines() if not ln.startswith("#")]
    assert len(rules) == 3 and not any("+" in r or "#" in r for r in rules)
    orch = orchestrator_acl("ota", ["orchestrator", "orch-b"])
    assert orch.count("topic read ota/+/status") == 2 and "user orch-b" in orch


def test_the_configuration_binds_client_ids_on_the_devices_listener_only() -> None:
    conf = mosquitto_conf("/etc/x", devices_port=1883, orchestrator_port=1884)
    devices, orchestrators = conf.split("listener 1884")
    assert "listener 1883\nallow_anonymous false\nuse_username_as_clientid true" in devices
    assert "use_username_as_clientid" not in orchestrators
    assert "password_file /etc/x/orchestrators.passwd" in orchestrators
    assert conf.index("per_listener_settings true") < conf.index("listener 1883")
    assert "plugin" not in conf.replace("Needs no plugin", "")


def test_a_refused_subscription_is_seen_in_every_form_of_suback() -> None:
    assert refusal([ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")]) is None
    assert refusal([ReasonCode(PacketTypes.SUBACK, "Not authorized")]) == "Not authorized"
    assert refusal((1,)) is None and refusal((128,)) == "code 128"
    assert refusal([0, 0x87]) == "code 135"
