import json

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.payloads import (
    ProgressReport,
    Rejection,
    StatusReport,
    parse_message,
)
from orchestrator.domain.versions import BadVersion, check_version, is_valid_version

P = "ota"


def test_valid_status() -> None:
    msg = parse_message(P, "ota/6523/status", json.dumps({
        "manuf": "China Mobile", "model": "M5310", "fota_version": "1.2",
        "sota_version": "a_b-c.9", "signal": 10, "power": 30, "extra": [1]}).encode())
    assert msg == StatusReport(6523, "China Mobile", "M5310", "1.2", "a_b-c.9", 10, 30)


def test_status_subset_and_empty_object() -> None:
    assert parse_message(P, "ota/1/status", b'{"signal": -3}') == StatusReport(1, signal=-3)
    assert parse_message(P, "ota/1/status", b"{}") == StatusReport(1)


def test_the_radio_keys_are_optional_and_bounded() -> None:
    msg = parse_message(P, "ota/7/status", b'{"signal": 9, "cell": "460-00-1a2b", "rsrp": -112,'
                                           b' "ce_level": 2}')
    assert msg == StatusReport(7, signal=9, cell="460-00-1a2b", rsrp=-112, ce_level=2)
    assert reason("ota/7/status", b'{"rsrp": -201}') == "out_of_range"
    assert reason("ota/7/status", b'{"rsrp": 1}') == "out_of_range"
    assert reason("ota/7/status", b'{"ce_level": 3}') == "out_of_range"
    assert reason("ota/7/status", b'{"ce_level": "0"}') == "bad_type"
    assert reason("ota/7/status", b'{"cell": 17}') == "bad_type"
    assert reason("ota/7/status", b'{"cell": ""}') == "bad_text"


def test_valid_progress() -> None:
    msg = parse_message(P, "ota/9/progress", b'{"campaign": 4, "step": 101, "version": "2"}')
    assert msg == ProgressReport(9, 4, 101, "2")


def reason(topic: str, payload: bytes) -> str:
    msg = parse_message(P, topic, payload)
    assert isinstance(msg, Rejection), msg
    return msg.reason


def test_rejections_name_their_reason() -> None:
    assert reason("ota/1/status", b"") == "empty"
    assert reason("ota/1/status", b'{"signal": 1') == "bad_json"
    assert reason("ota/1/status", b"\xff\xfe{}") == "not_utf8"
    assert reason("ota/1/status", b"[1, 2]") == "not_object"
    assert reason("ota/1/status", b'{"signal": "12"}') == "bad_type"
    assert reason("ota/1/status", b'{"signal": 1.5}') == "bad_type"
    assert reason("ota/1/status", b'{"power": true}') == "bad_type"
    assert reason("ota/1/status", b'{"power": 101}') == "out_of_range"
    assert reason("ota/1/status", b'{"fota_version": "1.2 beta"}') == "bad_version"
    assert reason("ota/1/status", b'{"fota_version": "123456789012345678901"}') == "bad_version"
    assert reason("ota/1/status", b'{"manuf": ""}') == "bad_text"
    assert reason("ota/1/status", b'{"manuf": "a\\u0000b"}') == "bad_text"   # NUL
    assert reason("ota/1/status", b'{"model": "\\ud800"}') == "bad_json"     # lone surrogate
    assert reason("ota/abc/status", b"{}") == "bad_dev_id"
    assert reason("ota/0/status", b"{}") == "bad_dev_id"
    assert reason("ota/99999999999999999999/status", b"{}") == "bad_dev_id"
    assert reason("ota/-5/status", b"{}") == "bad_dev_id"
    assert reason("ota/١٢/status", b"{}") == "bad_dev_id"  # non-ASCII digits
    assert reason("other/1/status", b"{}") == "bad_topic"
    assert reason("ota/1/command", b"{}") == "bad_topic"
    # the ingest hands over an empty topic, and undecodable topic bytes as U+FFFD
    assert reason("", b"{}") == "bad_topic"
    assert reason("ota/1\ufffd/status", b"{}") == "bad_dev_id"
    assert reason("ota/1/progress", b'{"step": 5}') == "missing_field"
    assert reason("ota/1/progress", b'{"campaign": 1, "step": 150}') == "out_of_range"
    assert reason("ota/1/progress", b'{"campaign": 0, "step": 5}') == "out_of_range"
    assert reason("ota/1/status", b"[" * 100000) == "bad_json"


@given(st.text(max_size=40), st.binary(max_size=300))
def test_arbitrary_bytes_on_any_topic_never_raise(topic: str, payload: bytes) -> None:
    msg = parse_message(P, topic, payload)
    assert isinstance(msg, StatusReport | ProgressReport | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)


@given(st.integers(), st.sampled_from(["status", "progress"]),
       st.dictionaries(st.sampled_from(["manuf", "model", "fota_version", "sota_version",
                                        "signal", "power", "campaign", "step", "version"]),
                       json_values, max_size=9))
def test_arbitrary_json_objects_validate_or_reject(dev: int, kind: str, obj: dict) -> None:
    msg = parse_message(P, f"ota/{dev}/{kind}", json.dumps(obj).encode())
    if isinstance(msg, StatusReport):
        for key in ("fota_version", "sota_version"):
            assert getattr(msg, key) is None or is_valid_version(getattr(msg, key))
        assert msg.power is None or 0 <= msg.power <= 100
        assert dev > 0
    elif isinstance(msg, ProgressReport):
        assert msg.campaign > 0 and (0 <= msg.step <= 107 or 201 <= msg.step <= 208)


@given(st.from_regex(r"[A-Za-z0-9_\-.]{1,20}", fullmatch=True))
def test_valid_versions_accepted(v: str) -> None:
    assert check_version(v) == v


@given(st.text(max_size=30))
def test_version_rule_matches_the_seed(v: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
    expected = 1 <= len(v) <= 20 and set(v) <= allowed
    assert is_valid_version(v) == expected
    if not expected:
        try:
            check_version(v)
        except BadVersion as exc:
            assert "version" in str(exc)
        else:
            raise AssertionError("accepted a bad version")
