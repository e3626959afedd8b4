"""The custom-domain state machine (orderflow_ingest/domains/policy.py): pure, clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orderflow_ingest.domains.policy import (
    EVENT_TYPES,
    Answer,
    CheckResult,
    DomainState,
    Policy,
    step,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PASS = CheckResult(Answer.YES, Answer.YES)
MX_GONE = CheckResult(Answer.YES, Answer.NO)  # TXT still there, MX elsewhere / none
TXT_GONE = CheckResult(Answer.NO, Answer.YES)
BOTH_GONE = CheckResult(Answer.NO, Answer.NO)
TIMEOUT = CheckResult(Answer.ERROR, Answer.ERROR)
MX_SERVFAIL = CheckResult(Answer.NO, Answer.ERROR)  # a clear TXT answer is not enough
PENDING_TXT_ONLY = CheckResult(Answer.YES, Answer.NO)


def run(
    results: list[CheckResult],
    start: DomainState | None = None,
    policy: Policy | None = None,
    every: timedelta = timedelta(minutes=5),
) -> tuple[DomainState, list[str | None], datetime]:
    state = start or DomainState()
    policy = policy or Policy(confirmations=2)
    now = T0
    seen: list[str | None] = []
    for result in results:
        now += every
        outcome = step(state, result, now, policy)
        assert (outcome.event is None) == (not outcome.changed)
        seen.append(outcome.event)
        state = outcome.after
    return state, seen, now


def verified() -> DomainState:
    return run([PASS, PASS])[0]


def test_pending_is_verified_after_n_consecutive_passes() -> None:
    state, seen, now = run([PASS, PASS])
    assert seen == [None, "domain.verified"]
    assert state.state == "verified" and state.verified_at == now


def test_pending_needs_both_txt_and_mx() -> None:
    state, seen, _ = run([PENDING_TXT_ONLY] * 5 + [TXT_GONE] * 5)
    assert state.state == "pending" and set(seen) == {None}


def test_verified_loses_mx_after_n_results_then_restored() -> None:
    state, seen, now = run([MX_GONE, MX_GONE], start=verified())
    assert seen == [None, "domain.mx_lost"]
    assert state.state == "mx_lost" and state.mx_lost_since == now
    state, seen, _ = run([PASS, PASS], start=state)
    assert seen == [None, "domain.restored"]
    assert state.state == "verified" and state.mx_lost_since is None


def test_mx_lost_is_suspended_when_the_grace_runs_out() -> None:
    policy = Policy(confirmations=2, mx_grace=timedelta(hours=48))
    lost = run([MX_GONE, MX_GONE], start=verified(), policy=policy)[0]
    since = lost.mx_lost_since
    assert since is not None
    # Hourly checks: still mx_lost at 47 h, suspended at the first check at or past 48 h.
    state, seen, _now = run([MX_GONE] * 47, start=lost, policy=policy, every=timedelta(hours=1))
    assert state.state == "mx_lost" and set(seen) == {None}
    outcome = step(state, MX_GONE, since + timedelta(hours=48), policy)
    assert outcome.event == "domain.suspended" and outcome.after.state == "suspended"


def test_mx_lost_is_suspended_at_once_when_the_txt_is_gone() -> None:
    lost = run([MX_GONE, MX_GONE], start=verified())[0]
    state, seen, _ = run([BOTH_GONE, BOTH_GONE], start=lost)
    assert seen == [None, "domain.suspended"] and state.state == "suspended"


def test_verified_whose_txt_is_withdrawn_is_suspended() -> None:
    _state, seen, _ = run([TXT_GONE, TXT_GONE], start=verified())
    assert seen == [None, "domain.suspended"]


def test_suspended_is_restored_when_checks_pass_again() -> None:
    lost = run([MX_GONE, MX_GONE], start=verified())[0]
    suspended = run([BOTH_GONE, BOTH_GONE], start=lost)[0]
    state, seen, _ = run([PASS, PASS], start=suspended)
    assert seen == [None, "domain.restored"] and state.state == "verified"


def test_flapping_mx_never_changes_state() -> None:
    state, seen, _ = run([MX_GONE, PASS] * 20, start=verified())
    assert state.state == "verified" and set(seen) == {None}
    lost = run([MX_GONE, MX_GONE], start=verified())[0]
    state, seen, _ = run([PASS, MX_GONE] * 20, start=lost)
    assert state.state == "mx_lost" and set(seen) == {None}


@pytest.mark.parametrize("failure", [TIMEOUT, MX_SERVFAIL, CheckResult(Answer.ERROR, Answer.NO)])
def test_resolver_failures_change_nothing(failure: CheckResult) -> None:
    for start in (DomainState(), verified()):
        state, seen, _ = run([failure] * 50, start=start)
        assert state == start and set(seen) == {None}
    # Nor do they break or extend a streak: PASS, failure, PASS is two passes in a row.
    state, seen, _ = run([PASS, failure, PASS])
    assert seen[-1] == "domain.verified"
    state, seen, _ = run([MX_GONE, failure, failure, MX_GONE], start=verified())
    assert seen[-1] == "domain.mx_lost"


def test_resolver_failures_do_not_suspend_after_the_grace() -> None:
    policy = Policy(confirmations=1, mx_grace=timedelta(hours=1))
    lost = run([MX_GONE], start=verified(), policy=policy)[0]
    state, seen, _ = run([TIMEOUT] * 10, start=lost, policy=policy, every=timedelta(hours=1))
    assert state.state == "mx_lost" and set(seen) == {None}
    # The first conclusive result past the grace that still finds the MX elsewhere acts.
    state, seen, _ = run([MX_GONE], start=state, policy=policy, every=timedelta(hours=11))
    assert seen == ["domain.suspended"]


def test_one_confirmation_moves_at_once_and_events_are_once_per_transition() -> None:
    policy = Policy(confirmations=1)
    results = [PASS, PASS, MX_GONE, MX_GONE, PASS, PASS, TXT_GONE, TXT_GONE, PASS]
    _state, seen, _ = run(results, policy=policy)
    assert [event for event in seen if event] == [
        "domain.verified",
        "domain.mx_lost",
        "domain.restored",
        "domain.suspended",
        "domain.restored",
    ]
    assert set(EVENT_TYPES) == {
        "domain.verified",
        "domain.mx_lost",
        "domain.suspended",
        "domain.restored",
    }


def test_policy_refuses_zero_confirmations() -> None:
    with pytest.raises(ValueError):
        Policy(confirmations=0)


def test_gauge_shows_every_state_even_when_empty() -> None:
    from orderflow_ingest.domains.gauges import domain_families

    (family,) = domain_families([{"state": "mx_lost", "domains": 2.0}])
    assert family.name == "orderflow_custom_domains"
    values = {sample.labels["state"]: sample.value for sample in family.samples}
    assert values == {"pending": 0.0, "verified": 0.0, "mx_lost": 2.0, "suspended": 0.0}
