"""What a delivery can end as, and how each outcome is told to Postfix.

One table, as Postfix's own sys_exits_table: each outcome maps to the pipe(8) exit status
(sysexits) and the SMTP reply the milter would give for the same condition. pipe(8) defers on
71 and 75 and bounces on every other non-zero status, so only outcomes a sender can fix bounce.
"""

from __future__ import annotations

from enum import Enum

EX_OK = 0
EX_NOUSER = 67
EX_TEMPFAIL = 75


class Outcome(Enum):
    """(exit status, SMTP reply, short text). The text may reach a sender; it holds no detail."""

    DELIVERED = (EX_OK, "250 2.0.0", "delivered")
    DUPLICATE = (EX_OK, "250 2.0.0", "duplicate, already received")
    MALFORMED_STORED = (EX_OK, "250 2.0.0", "stored; content could not be parsed")
    # Mail Postfix already queued for an org disabled since: kept (raw stored, row FAILED with
    # reason org_disabled), never bounced to a sender that may be forged (issue 16).
    HELD_FOR_DISABLED_ORG = (EX_OK, "250 2.0.0", "stored")
    UNKNOWN_ORG = (EX_NOUSER, "550 5.1.1", "Unknown recipient")
    BACKEND_UNAVAILABLE = (EX_TEMPFAIL, "451 4.3.0", "temporary failure, try again later")
    TIMED_OUT = (EX_TEMPFAIL, "451 4.3.0", "temporary failure (timeout), try again later")
    INTERNAL_ERROR = (EX_TEMPFAIL, "451 4.3.0", "temporary failure, try again later")

    @property
    def exit_status(self) -> int:
        return self.value[0]

    @property
    def smtp_reply(self) -> str:
        return self.value[1]

    @property
    def text(self) -> str:
        return self.value[2]
