"""Every exit status our programs use, and what a delivery can end as.

One table, as Postfix's own sys_exits_table. The sysexits(3) statuses are the standard
library's `os.EX_*` (the values of <sysexits.h>, which the C client `pipe/deliver.c` includes),
so a status means the same thing to pipe(8), systemd and a person reading `echo $?`:

  EX_OK        0   done
  EXIT_FAILURE 1   a command's plain "no": not found, refused, a check failed
  EXIT_USAGE   2   bad arguments (what typer/click exit with on their own usage errors)
  EX_NOINPUT  66   an input file cannot be read (`inspect FILE`)
  EX_NOUSER   67   org unknown at delivery time: pipe(8) bounces
  EX_SOFTWARE 70   a daemon stopped on an unexpected error of ours
  EX_OSERR    71   the system refused a resource at start-up (socket, user): pipe(8) defers
  EX_TEMPFAIL 75   a fault a retry can cure (backend down, deadline): pipe(8) defers, a timer
                   or systemd runs it again
  EX_CONFIG   78   a setting is missing or malformed; the message names it

Each delivery outcome maps to its pipe(8) exit status and the SMTP reply the milter would give
for the same condition. pipe(8) defers on 71 and 75 and bounces on every other non-zero status,
so only outcomes a sender can fix bounce.
"""

from __future__ import annotations

import os
from enum import Enum

EX_OK = os.EX_OK
EX_NOINPUT = os.EX_NOINPUT
EX_NOUSER = os.EX_NOUSER
EX_SOFTWARE = os.EX_SOFTWARE
EX_OSERR = os.EX_OSERR
EX_TEMPFAIL = os.EX_TEMPFAIL
EX_CONFIG = os.EX_CONFIG
# Not sysexits: the shell's plain failure, and click's usage error (typer exits with 2 when it
# rejects an option itself, so our own argument checks answer the same).
EXIT_FAILURE = 1
EXIT_USAGE = 2


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
