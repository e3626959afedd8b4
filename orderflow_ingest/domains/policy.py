"""The custom-domain state machine: pure, no database, no DNS, the clock passed in.

    pending   --pass x N-->                       verified   (domain.verified)
    verified  --MX not ours x N-->                mx_lost    (domain.mx_lost)
    verified  --TXT gone x N-->                   suspended  (domain.suspended)
    mx_lost   --TXT gone x N, or grace over-->    suspended  (domain.suspended)
    mx_lost, suspended --pass x N-->              verified   (domain.restored)

"pass" is TXT token present AND every MX host one of ours. "x N" is N consecutive conclusive
results (ORDERFLOW_DOMAIN_CONFIRMATIONS): flapping DNS (a secondary serving an old zone, a
half-finished migration) does not move a domain back and forth. A result in which either look-up
failed (timeout, SERVFAIL, no server answered) is inconclusive: it changes nothing at all, not
even the streaks, so a resolver outage can neither verify, lose nor suspend a domain, and the
grace of mx_lost is only acted on at a conclusive check that still finds the MX elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum

STATES = ("pending", "verified", "mx_lost", "suspended")


class Answer(Enum):
    """One look-up's conclusion."""

    YES = "yes"  # TXT token present / every MX is ours
    NO = "no"  # a clear answer that says otherwise (NXDOMAIN, NODATA, other records)
    ERROR = "error"  # no answer to go by (timeout, SERVFAIL, no nameservers)


@dataclass(frozen=True)
class CheckResult:
    txt: Answer
    mx: Answer
    detail: str = ""  # for the operator: what was found (never decides anything)

    @property
    def conclusive(self) -> bool:
        return self.txt is not Answer.ERROR and self.mx is not Answer.ERROR

    @property
    def passed(self) -> bool:
        return self.txt is Answer.YES and self.mx is Answer.YES


@dataclass(frozen=True)
class DomainState:
    state: str = "pending"
    pass_streak: int = 0
    mx_fail_streak: int = 0
    txt_fail_streak: int = 0
    mx_lost_since: datetime | None = None
    verified_at: datetime | None = None


@dataclass(frozen=True)
class Policy:
    confirmations: int = 2  # ORDERFLOW_DOMAIN_CONFIRMATIONS
    mx_grace: timedelta = timedelta(hours=48)  # ORDERFLOW_DOMAIN_MX_GRACE

    def __post_init__(self) -> None:
        if self.confirmations < 1:
            raise ValueError("confirmations must be at least 1")


# The event each transition writes (once: the store writes it with the state change).
EVENTS = {
    ("pending", "verified"): "domain.verified",
    ("verified", "mx_lost"): "domain.mx_lost",
    ("verified", "suspended"): "domain.suspended",
    ("mx_lost", "suspended"): "domain.suspended",
    ("mx_lost", "verified"): "domain.restored",
    ("suspended", "verified"): "domain.restored",
}
EVENT_TYPES = tuple(sorted(set(EVENTS.values())))


@dataclass(frozen=True)
class Step:
    before: DomainState
    after: DomainState
    event: str | None  # set exactly when the state changed

    @property
    def changed(self) -> bool:
        return self.after.state != self.before.state


def step(current: DomainState, result: CheckResult, now: datetime, policy: Policy) -> Step:
    """The state after one check result at `now`."""
    if current.state not in STATES:
        raise ValueError(f"unknown domain state {current.state!r}")
    if not result.conclusive:
        return Step(current, current, None)
    streaks = replace(
        current,
        pass_streak=current.pass_streak + 1 if result.passed else 0,
        mx_fail_streak=current.mx_fail_streak + 1 if result.mx is Answer.NO else 0,
        txt_fail_streak=current.txt_fail_streak + 1 if result.txt is Answer.NO else 0,
    )
    n = policy.confirmations
    target = _target(streaks, now, policy, n)
    if target is None or target == current.state:
        return Step(current, streaks, None)
    after = replace(
        streaks,
        state=target,
        mx_lost_since=now if target == "mx_lost" else None,
        verified_at=now if target == "verified" else streaks.verified_at,
    )
    return Step(current, after, EVENTS[(current.state, target)])


def _target(s: DomainState, now: datetime, policy: Policy, n: int) -> str | None:
    if s.state == "pending":
        return "verified" if s.pass_streak >= n else None
    if s.state == "verified":
        if s.txt_fail_streak >= n:
            return "suspended"  # the ownership proof was withdrawn
        if s.mx_fail_streak >= n:
            return "mx_lost"
        return None
    if s.state == "mx_lost":
        if s.pass_streak >= n:
            return "verified"
        if s.txt_fail_streak >= n:
            return "suspended"
        since = s.mx_lost_since or now
        if s.mx_fail_streak > 0 and now - since >= policy.mx_grace:
            return "suspended"
        return None
    # suspended
    return "verified" if s.pass_streak >= n else None
