"""Every SMTP reply the milter gives, in one table (as aiosmtpd keeps its replies).

The recipient and backend replies come from `outcomes.Outcome`, so the milter at RCPT and
the delivery service at delivery time answer the same condition the same way. Texts reach
the sender: short, no detail, nothing the sender controls except a From domain that was
checked to be a domain name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orderflow_ingest.outcomes import Outcome


@dataclass(frozen=True)
class Reply:
    code: str  # "550"
    status: str  # enhanced status code, "5.1.1"
    text: str

    @property
    def temporary(self) -> bool:
        return self.code.startswith("4")

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


def _from_outcome(outcome: Outcome, text: str | None = None) -> Reply:
    code, status = outcome.smtp_reply.split()
    return Reply(code, status, text or outcome.text)


UNKNOWN_RECIPIENT = _from_outcome(Outcome.UNKNOWN_ORG)
BACKEND_UNAVAILABLE = _from_outcome(Outcome.BACKEND_UNAVAILABLE)
INTERNAL_ERROR = _from_outcome(Outcome.INTERNAL_ERROR)
DNS_TEMPFAIL = Reply("451", "4.4.3", "temporary DNS failure checking the sender, try again later")
# Postfix's own words for a full queue file system (smtpd's queue_minfree check, RFC 3463).
INSUFFICIENT_STORAGE = Reply("452", "4.3.1", "Insufficient system storage")

_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$")


def dmarc_reject(domain: str) -> Reply:
    """550 5.7.1 naming the domain whose policy asked for it (RFC 7489 7.3)."""
    shown = domain if _DOMAIN.match(domain) else "the sender's domain"
    return Reply("550", "5.7.1", f"rejected by the DMARC policy of {shown}")
