import json

from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.onenet import (
    Failed,
    NoTask,
    ProtocolError,
    Retryable,
    TaskFound,
    authorization,
    outcome_errno,
    parse_check_response,
    parse_errno_answer,
    printable,
    quote_value,
    sign,
)
from orchestrator.domain.resilience import Breaker
from orchestrator.sim import DEMO_ACCESS_KEY as KEY
from orchestrator.sim.auth import unquote_value, verify_authorization
from orchestrator.sim.onenet import Simulator
from orchestrator.sim.scenario import Scenario


def test_worked_vector_from_onenet_ota_md() -> None:
    assert sign(KEY, "products/123123", 1537255523, "sha1") == "ks8WxxlpD55mmv2o/hk3Ceiu8d4="
    assert sign(KEY, "products/123123", 1537255523, "md5") == "t/xS1RYhmIfkWZG3sd4l4w=="
    assert sign(KEY, "products/123123", 1537255523, "sha256") == (
        "iHPBEsTIHLa4Chdn4pfMBYC4xbOJ4SpkF29/Kv4CbrM=")
    assert authorization("123123", KEY, 1537255523, "sha1") == (
        "version=2018-10-31&res=products%2F123123&et=1537255523&method=sha1"
        "&sign=ks8WxxlpD55mmv2o%2Fhk3Ceiu8d4%3D")


@given(st.text(max_size=40))
def test_quote_round_trips_and_escapes_only_the_listed(value: str) -> None:
    quoted = quote_value(value)
    assert unquote_value(quoted) == value
    for c in "+ /?#&=":
        assert c not in quoted
    for c in value:
        if c not in "+ /?%#&=":
            assert c in quoted


@given(st.sampled_from(["md5", "sha1", "sha256"]), st.integers(2_000_000_000, 2**40),
       st.from_regex(r"[0-9]{1,12}", fullmatch=True))
def test_tokens_verify_and_forgeries_do_not(method: str, et: int, pid: str) -> None:
    header = authorization(pid, KEY, et, method)
    assert verify_authorization(header, pid, KEY, now=1_900_000_000)
    assert not verify_authorization(header, pid, KEY, now=et + 1)         # expired
    assert not verify_authorization(header, pid + "1", KEY, now=1_900_000_000)
    forged = header.replace("sign=", "sign=A")
    assert not verify_authorization(forged, pid, KEY, now=1_900_000_000)


def test_garbage_authorization_never_raises() -> None:
    for h in ["", "x", "et=abc&method=sha1", "version=2018-10-31&res=products%2F1&et=1&"
              "method=sha9&sign=x", "=&=&", None]:
        assert not verify_authorization(h, "1", KEY, now=0)


TASK = {"target": "1.3", "token": "ota_abc", "size": 123, "signal": 12, "power": 90,
        "retry": 10, "interval": 90, "md5": "d41d8cd98f00b204e9800998ecf8427e",
        "ipPort": "172.19.3.3", "type": 1}


def answer(doc: object, status: int = 200) -> object:
    return parse_check_response(status, json.dumps(doc).encode())


def test_check_answers_map_to_typed_outcomes() -> None:
    found = answer({"errno": 0, "error": "succ", "data": TASK})
    assert isinstance(found, TaskFound) and found.task.ip_port == "172.19.3.3"
    assert found.task.to_json() == TASK
    assert isinstance(answer({"errno": 11, "error": "no task"}), NoTask)
    for errno in (1, 2, 8, 9, 27, 32):
        out = answer({"errno": errno, "error": "x"})
        assert isinstance(out, Failed) and out.errno == errno and outcome_errno(out) == errno
    seven = answer({"errno": 7, "error": "internal"})
    assert isinstance(seven, Retryable) and outcome_errno(seven) == 7


def test_garbage_answers_are_protocol_errors_never_tasks() -> None:
    cases = [
        parse_check_response(200, b"<html>"),
        parse_check_response(200, b""),
        answer([1, 2]),
        answer({"error": "succ"}),
        answer({"errno": "0", "data": TASK}),
        answer({"errno": 0, "error": "succ"}),
        answer({"errno": 0, "data": {**TASK, "size": "123"}}),
        answer({"errno": 0, "data": {**TASK, "retry": True}}),
        answer({"errno": 0, "data": {**TASK, "target": "1 3"}}),
        answer({"errno": 0, "data": {**TASK, "token": "../x"}}),
        answer({"errno": 0, "data": {**TASK, "type": 3}}),
        answer({"errno": 0, "data": {k: v for k, v in TASK.items() if k != "md5"}}),
        answer({"errno": 55}),
        parse_check_response(404, b"{}"),
    ]
    for out in cases:
        assert isinstance(out, ProtocolError), out
        assert outcome_errno(out) == -1
    assert isinstance(parse_check_response(502, b"bad gateway"), Retryable)
    assert isinstance(parse_check_response(429, b""), Retryable)


@given(st.integers(100, 599), st.binary(max_size=200))
def test_any_answer_is_an_outcome(status: int, body: bytes) -> None:
    out = parse_check_response(status, body)
    assert isinstance(out, TaskFound | NoTask | Failed | Retryable | ProtocolError)


def test_breaker_opens_probes_and_closes() -> None:
    b = Breaker(threshold=3, cooldown=10, max_cooldown=40)
    for t in range(3):
        ok, b = b.allow(t)
        assert ok
        b = b.record(False, t)
    assert b.is_open(2.5)
    assert b.allow(5)[0] is False
    ok, b = b.allow(12.1)            # cooldown over: one probe
    assert ok and b.probing
    assert b.allow(12.2)[0] is False   # only one probe at a time
    b = b.record(False, 12.3)        # probe failed: open again, longer
    assert b.open_until == 12.3 + 20
    ok, b = b.allow(33)
    assert ok
    b = b.record(True, 33)
    assert not b.is_open(33) and b.allow(33)[0] and b.failures == 0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=60))
def test_breaker_never_allows_two_probes(events: list[tuple[bool, float]]) -> None:
    b, now = Breaker(threshold=2, cooldown=1), 0.0
    for ok, dt in events:
        now += dt
        allowed, b = b.allow(now)
        if allowed:
            if b.probing:
                assert b.allow(now)[0] is False
            b = b.record(ok, now)
        assert b.open_until <= now + b.max_cooldown


def test_ip_port_must_be_a_host_and_an_optional_port() -> None:
    def answer(ip_port: str) -> object:
        data = {"target": "1.3", "token": "t", "size": 1, "signal": 1, "power": 1,
                "retry": 1, "interval": 1, "md5": "m", "type": 1, "ipPort": ip_port}
        return parse_check_response(200, json.dumps({"errno": 0, "data": data}).encode())

    assert isinstance(answer("cdn.example.com:8080"), TaskFound)
    assert isinstance(answer("10.1.2.3:80"), TaskFound)
    assert isinstance(answer("172.19.3.3"), TaskFound)     # the seed's own example
    for bad in ("evil.com/x?", "user:pw@host:80", "host:", "host:0", "host:80/path",
                "host:80#frag", "a b:80"):
        assert isinstance(answer(bad), ProtocolError), bad


def test_the_simulator_verifies_a_signature_once_and_its_expiry_always() -> None:
    now = [1_900_000_000.0]
    sim = Simulator(Scenario(product_id="7", access_key=KEY), clock=lambda: now[0])
    header = authorization("7", KEY, 1_900_000_100, "sha256")

    def asks(h: str) -> bool:
        return sim.authorized(make_mocked_request("POST", "/ota/south/check",
                                                  headers={"Authorization": h}))

    assert asks(header) and asks(header)
    assert not asks(header.replace("sign=", "sign=A"))      # a forgery is never cached
    now[0] = 1_900_000_101
    assert not asks(header)                                  # cached, and expired
    for i in range(2000):                                    # the cache stays bounded
        now[0] = 1_900_000_000
        assert asks(authorization("7", KEY, 1_900_000_200 + i, "md5"))
    assert len(sim.verified) <= 1024


def test_an_endpoints_error_text_is_kept_printable_and_short() -> None:
    """Its error text is stored with the device: a NUL (which PostgreSQL's text refuses)
    or a megabyte of it must not stop the batch's record."""
    for errno, kind in ((1, Failed), (7, Retryable)):
        out = answer({"errno": errno, "error": "bad\u0000answer\n\x7f" + "x" * 5000})
        assert isinstance(out, kind)
        text = out.error if isinstance(out, Failed) else out.detail
        assert text.startswith("bad\ufffdanswer\ufffd\ufffd") and len(text) == 200


@given(st.text())
def test_printable_never_keeps_a_control_character(text: str) -> None:
    kept = printable(text)
    assert len(kept) <= 200 and kept == printable(kept)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in kept)


def test_a_sibling_answer_is_an_errno_or_none_never_a_guess() -> None:
    """What the relay counts as answered: an integer errno in a JSON object with 200."""
    assert parse_errno_answer(200, b'{"errno": 0, "error": "succ"}') == 0
    assert parse_errno_answer(200, b'{"errno": 17}') == 17
    for status, body in [(500, b'{"errno": 0}'), (200, b"<html>busy</html>"), (200, b""),
                         (200, b"[0]"), (200, b'{"errno": "0"}'), (200, b'{"errno": true}'),
                         (200, b'{"errno": 1.5}'), (200, b'{"error": "succ"}'),
                         (200, b"\xff\xfe"), (200, b"[" * 100_000)]:
        assert parse_errno_answer(status, body) is None, (status, body[:20])


@given(st.binary(max_size=200))
def test_any_sibling_answer_body_parses_without_raising(body: bytes) -> None:
    errno = parse_errno_answer(200, body)
    assert errno is None or (type(errno) is int)
