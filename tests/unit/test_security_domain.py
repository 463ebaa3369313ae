"""Progress bound to a dispatch, and canonical device ids (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.campaign import CampaignInputError, Member, check_retry
from orchestrator.domain.device import IN_FLIGHT, STATES, DeviceRow, Policy, progress_refusal
from orchestrator.domain.onenet import Task
from orchestrator.domain.payloads import ProgressReport, parse_dev_id, parse_message
from orchestrator.domain.progress import apply_progress, policy_for

TASK = Task("1.3", "tok", 100, 10, 20, 2, 60, "m" * 32, 1)
STEPS = [*range(0, 101), *range(101, 108), *range(201, 209)]


def member(state: str, attempt: str | None = "a1b2c3d4") -> Member:
    return Member(1, 7, 0, 0, DeviceRow(state=state, task=TASK, attempt=attempt), "fota", "1.3")


@given(st.sampled_from(STATES), st.sampled_from(STEPS),
       st.one_of(st.none(), st.sampled_from(["a1b2c3d4", "deadbeef"])), st.booleans())
def test_only_the_dispatched_attempt_moves_a_device(state: str, step: int,
                                                    attempt: str | None,
                                                    require: bool) -> None:
    m = member(state)
    rows, _, rejected, relays = apply_progress(
        {(1, 7): m}, [ProgressReport(7, 1, step, None, attempt)], 0.0, Policy(), require)
    moved = rows[(1, 7)] != m.row
    if state not in IN_FLIGHT:
        assert not moved and not relays and rejected[0].reason == "not_dispatched"
    elif attempt == "deadbeef":
        assert not moved and not relays and rejected[0].reason == "stale_attempt"
    elif attempt is None and require:
        assert not moved and not relays and rejected[0].reason == "missing_attempt"
    if moved:
        assert relays, "an applied step is relayed"


def test_a_forged_success_never_touches_a_device_that_was_not_commanded() -> None:
    for state in ("pending", "checking", "gated"):
        for attempt in (None, "a1b2c3d4"):
            assert progress_refusal(DeviceRow(state=state), 201, attempt) == "not_dispatched"


def test_out_of_order_steps_are_refused() -> None:
    upgrading = DeviceRow(state="upgrading", attempt="a1b2c3d4")
    assert progress_refusal(upgrading, 50, "a1b2c3d4") == "out_of_order"
    assert progress_refusal(upgrading, 201, "a1b2c3d4") is None
    assert progress_refusal(upgrading, 104, "a1b2c3d4") == "out_of_order"


def test_device_ids_are_canonical_decimal() -> None:
    assert parse_dev_id("7") == 7
    for bad in ("0007", "07", "+7", "-7", "0", " 7", "7 ", "٧"):
        assert parse_dev_id(bad) is None, bad
    rejected = parse_message("ota", "ota/0007/status", b'{"signal": 5}')
    assert getattr(rejected, "reason", None) == "bad_dev_id"
    bad_attempt = parse_message("ota", "ota/7/progress",
                                b'{"campaign": 1, "step": 5, "attempt": "../x"}')
    assert getattr(bad_attempt, "reason", None) == "bad_type"


def test_a_campaign_may_set_its_own_dispatch_timeout() -> None:
    m = member("downloading")
    own = Member(1, 7, 0, 0, m.row, "fota", "1.3", dispatch_timeout=60.0)
    rows, *_ = apply_progress({(1, 7): own}, [ProgressReport(7, 1, 10, None, "a1b2c3d4")],
                              1000.0, Policy(dispatch_timeout=1800))
    assert rows[(1, 7)].next_attempt_at == 1060.0
    assert policy_for(Policy(dispatch_timeout=1800), m).dispatch_timeout == 1800


def test_retry_requests_are_checked_once_for_cli_and_api() -> None:
    assert check_retry(["failed"], 8, "fixed") == (["failed"], 8, "fixed")
    for states, errno, reason, field in [
            (["succeeded"], None, "x", "state"), ([{}], None, "x", "state"),
            ([], None, "x", "state"), (["failed"], True, "x", "errno"),
            (["failed"], 2**40, "x", "errno"), (["failed"], None, "", "reason"),
            (["failed"], None, "a\x00b", "reason"), (["failed"], None, None, "reason")]:
        with pytest.raises(CampaignInputError, match=f"^{field}"):
            check_retry(states, errno, reason)
