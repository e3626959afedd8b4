"""The milter: one instance per SMTP connection, driven by libmilter's callbacks.

  connect/helo   remember the client (observation only: @Milter.noreply)
  MAIL FROM      start a new message: all per-message state is reset here; 452 4.3.1 while
                 the spool or Postfix's queue file system is under ORDERFLOW_MIN_FREE_MB
  RCPT TO        our domains: known active org -> continue; unknown, disabled, no +slug ->
                 550 5.1.1; database unreachable -> 451 4.3.0. Other domains: Postfix decides.
  DATA           SPF of the client IP, HELO and envelope sender (run here rather than at MAIL
                 FROM so that no DNS is spent on mail every recipient of which was refused)
  header/eoh/body  collect what DKIM and DMARC need; the body is hashed as it streams
  end of message DKIM, DMARC, then remove forged Authentication-Results and add ours; reject
                 or tempfail only when the configured policy says so

Any exception is caught: a callback that may reply answers 451 4.3.0; an observation-only
callback (which cannot reply) marks the message, and its next replying callback answers 451.
The daemon never dies of one bad message, and nothing is accepted unchecked.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import Milter

from orderflow_ingest import metrics
from orderflow_ingest.auth_verdicts import claims
from orderflow_ingest.diskspace import HeadroomGuard
from orderflow_ingest.logs import log_event
from orderflow_ingest.milter import replies
from orderflow_ingest.milter.authresults_header import HEADER_NAME, header_value, indices_to_remove
from orderflow_ingest.milter.dkim_body import BodyHashes
from orderflow_ingest.milter.dkim_check import (
    MAX_SIGNATURES,
    DkimVerdict,
    register_body_hash,
    signature_tags,
    verify_signatures,
)
from orderflow_ingest.milter.dmarc import DmarcVerdict, check_dmarc, from_domains
from orderflow_ingest.milter.dns import DnsBudget, DnsSource
from orderflow_ingest.milter.orgdomain import PublicSuffixList
from orderflow_ingest.milter.recipients import OrgDirectory, decide
from orderflow_ingest.milter.spf_check import SpfVerdict, check_spf

DECISIONS = "orderflow_milter_decisions_total"
VERDICTS = "orderflow_milter_verdicts_total"
# Distinct From domains remembered per message: two already decide DMARC (fail); the cap
# only bounds memory against a header block of thousands of addresses.
MAX_FROM_DOMAINS = 16
POSTFIX_OWN_RECEIVED = 1  # insert-header index just below Postfix's Received header
# The headers the milter reads; any other is only kept for DKIM.
_READ_HEADERS = frozenset(("authentication-results", "from", "dkim-signature", "message-id"))

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class MilterConfig:
    """What every connection shares: settings and the thread-safe services."""

    authserv_id: str
    local_part: str
    domains: tuple[str, ...]
    directory: OrgDirectory
    dns: DnsSource
    dns_timeout: float
    dmarc_reject: bool  # ORDERFLOW_DMARC_POLICY=reject
    tempfail_on_dns_error: bool
    max_header_bytes: int
    psl: PublicSuffixList  # ORDERFLOW_PUBLIC_SUFFIX_LIST, loaded at start (no fallback)
    dkim_l_policy: str = "record"  # ORDERFLOW_DKIM_L_POLICY
    headroom: HeadroomGuard | None = None  # ORDERFLOW_MIN_FREE_MB: 452 at MAIL FROM
    sample: Callable[[], float] = random.random  # DMARC pct= sampling


@dataclass
class MessageState:
    """Everything about the message in progress; replaced at each MAIL FROM."""

    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    slugs: list[str] = field(default_factory=list)
    spf: SpfVerdict | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # (name, value + CRLF)
    header_bytes: int = 0
    headers_truncated: bool = False
    ar_claims: list[bool] = field(default_factory=list)
    from_domains: set[str] = field(default_factory=set)  # of every From header
    signatures: list[bytes] = field(default_factory=list)
    signature_tags: list[dict[bytes, bytes] | None] = field(default_factory=list)
    signature_count: int = 0
    message_id: str | None = None
    body: BodyHashes = field(default_factory=BodyHashes)
    body_bytes: int = 0
    body_chunks: int = 0
    failed_in: str | None = None  # an observation-only callback raised


def _replying(func: F) -> F:
    """Any exception becomes 451 4.3.0 and a log line, never a dead connection or daemon."""

    @functools.wraps(func)
    def wrapper(self: OrderflowMilter, *args: Any) -> Any:
        try:
            return func(self, *args)
        except Exception:
            return self._internal_error(func.__name__)

    return wrapper  # type: ignore[return-value]


def _observing(func: F) -> F:
    """For @Milter.noreply callbacks: remember the failure for the next replying callback."""

    @functools.wraps(func)
    def wrapper(self: OrderflowMilter, *args: Any) -> Any:
        try:
            return func(self, *args)
        except Exception:
            self._log_exception(func.__name__)
            if func.__name__ in ("connect", "hello"):
                self._connection_failed_in = func.__name__
            else:
                self.message.failed_in = func.__name__
            return Milter.CONTINUE

    return wrapper  # type: ignore[return-value]


@Milter.header_leading_space
class OrderflowMilter(Milter.Base):
    """Per-connection state; the shared MilterConfig is thread-safe."""

    def __init__(self, config: MilterConfig):
        self.config = config
        self.client_ip: str | None = None
        self.client_name: str | None = None
        self.helo: str = ""
        self._connection_failed_in: str | None = None
        self.message = MessageState()

    # -- helpers ---------------------------------------------------------------------------

    def _queue_id(self) -> str | None:
        try:
            value = self.getsymval("i")
        except Exception:
            return None
        return value or None

    def _log_exception(self, callback: str) -> None:
        log_event(
            "milter.callback_failed",
            logging.ERROR,
            exc_info=True,
            callback=callback,
            queue_id=self._queue_id(),
            client_ip=self.client_ip,
        )

    def _answer(self, reply: replies.Reply) -> int:
        self.setreply(reply.code, reply.status, reply.text.replace("%", "%%"))
        return Milter.TEMPFAIL if reply.temporary else Milter.REJECT

    def _internal_error(self, callback: str) -> int:
        self._log_exception(callback)
        metrics.count(DECISIONS, decision="tempfail", reason="internal_error")
        try:
            return self._answer(replies.INTERNAL_ERROR)
        except Exception:
            return Milter.TEMPFAIL  # libmilter's own 451

    def _failed_earlier(self) -> str | None:
        return self._connection_failed_in or self.message.failed_in

    # -- connection ------------------------------------------------------------------------

    @Milter.noreply
    @_observing
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self.client_name = hostname
        if isinstance(hostaddr, tuple) and hostaddr:
            self.client_ip = str(hostaddr[0])
        return Milter.CONTINUE

    @Milter.noreply
    @_observing
    def hello(self, hostname: str) -> int:
        self.helo = hostname or ""
        return Milter.CONTINUE

    # -- envelope --------------------------------------------------------------------------

    @_replying
    def envfrom(self, sender: str, *params: str) -> int:
        self.message = MessageState(sender=sender.strip().strip("<>"))
        # Back-pressure (issue 13): 452 while the spool or Postfix's queue is short of space.
        # short() is a cached statvfs that never raises; unknown free space accepts.
        short = self.config.headroom.short() if self.config.headroom is not None else None
        if short is not None:
            metrics.count(DECISIONS, decision="tempfail", reason="insufficient_storage")
            log_event(
                "milter.mail",
                logging.WARNING,
                queue_id=self._queue_id(),
                client_ip=self.client_ip,
                sender=self.message.sender or "<>",
                decision="tempfail",
                reason="insufficient_storage",
                purpose=short.purpose,
                free_bytes=short.free_bytes,
            )
            return self._answer(replies.INSUFFICIENT_STORAGE)
        return Milter.CONTINUE

    @_replying
    def envrcpt(self, recipient: str, *params: str) -> int:
        if self._failed_earlier():
            return self._internal_error("envrcpt (after an earlier failure)")
        config = self.config
        verdict = decide(recipient, config.local_part, config.domains, config.directory)
        metrics.count(DECISIONS, decision=verdict.decision, reason=verdict.reason)
        log_event(
            "milter.rcpt",
            # A refused recipient is routine on an MX; a database that cannot answer is not.
            logging.WARNING if verdict.decision == "tempfail" else logging.INFO,
            queue_id=self._queue_id(),
            client_ip=self.client_ip,
            sender=self.message.sender or "<>",
            recipient=recipient.strip("<>"),
            slug=verdict.slug,
            decision=verdict.decision,
            reason=verdict.reason,
        )
        if verdict.decision == "reject":
            return self._answer(verdict.reply or replies.UNKNOWN_RECIPIENT)
        if verdict.decision == "tempfail":
            return self._answer(verdict.reply or replies.BACKEND_UNAVAILABLE)
        self.message.recipients.append(recipient)
        if verdict.slug:
            self.message.slugs.append(verdict.slug)
        return Milter.CONTINUE

    @_replying
    def data(self) -> int:
        if self._failed_earlier():
            return self._internal_error("data (after an earlier failure)")
        config = self.config
        budget = DnsBudget(config.dns, config.dns_timeout)
        spf = check_spf(self.client_ip or "", self.message.sender, self.helo, budget)
        self.message.spf = spf
        metrics.count(VERDICTS, method="spf", result=spf.result)
        if spf.result == "temperror" and config.tempfail_on_dns_error:
            return self._tempfail_dns("spf")
        return Milter.CONTINUE

    def _tempfail_dns(self, method: str) -> int:
        metrics.count(DECISIONS, decision="tempfail", reason=f"dns_temperror_{method}")
        log_event(
            "milter.dns_tempfail",
            logging.WARNING,
            queue_id=self._queue_id(),
            client_ip=self.client_ip,
            method=method,
        )
        return self._answer(replies.DNS_TEMPFAIL)

    # -- content ---------------------------------------------------------------------------

    @Milter.decode("bytes")
    @Milter.noreply
    @_observing
    def header(self, name: str | bytes, value: bytes) -> int:
        # Called once per header (a signed message has about twice as many): only the four
        # headers we read are decoded and looked at; every other one is an append.
        message = self.message
        if isinstance(name, str):
            name_bytes = name.encode("ascii", "surrogateescape")
        else:
            name_bytes, name = name, name.decode("ascii", "replace")
        if b"\n" in value:
            # Postfix sends continuation lines joined by LF; DKIM hashes them as CRLF.
            value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        size = len(name_bytes) + len(value) + 3
        if message.header_bytes + size > self.config.max_header_bytes:
            message.headers_truncated = True
        else:
            message.header_bytes += size
            message.headers.append((name_bytes, value + b"\r\n"))
        lname = name.lower()
        if lname not in _READ_HEADERS:
            return Milter.CONTINUE
        text = value.decode("utf-8", "surrogateescape")
        if lname == "authentication-results":
            message.ar_claims.append(claims(text, self.config.authserv_id))
        elif lname == "from":
            if len(message.from_domains) < MAX_FROM_DOMAINS:
                message.from_domains.update(from_domains(text))
        elif lname == "dkim-signature":
            message.signature_count += 1
            if len(message.signatures) < MAX_SIGNATURES and not message.headers_truncated:
                message.signatures.append(value)
        elif lname == "message-id" and message.message_id is None:
            message.message_id = text.strip()[:200]
        return Milter.CONTINUE

    @Milter.noreply
    @_observing
    def eoh(self) -> int:
        message = self.message
        # Each signature's tags are parsed once, here: for its body hash now, its check later.
        message.signature_tags = [signature_tags(value) for value in message.signatures]
        for tags in message.signature_tags:
            register_body_hash(tags, message.body)
        return Milter.CONTINUE

    @Milter.noreply
    @_observing
    def body(self, chunk: bytes) -> int:
        self.message.body_bytes += len(chunk)
        self.message.body_chunks += 1
        self.message.body.update(chunk)
        return Milter.CONTINUE

    @_replying
    def eom(self) -> int:
        if self._failed_earlier():
            return self._internal_error(f"eom (after a failure in {self._failed_earlier()})")
        message = self.message
        config = self.config
        dkim = self._verify_dkim()
        dmarc = check_dmarc(
            message.from_domains,
            message.spf,
            dkim,
            DnsBudget(config.dns, config.dns_timeout),
            config.psl,
        )
        for verdict in dkim:
            metrics.count(VERDICTS, method="dkim", result=verdict.result)
        metrics.count(VERDICTS, method="dmarc", result=dmarc.result)
        action, reason = self._policy(dkim, dmarc)
        self._log_verdicts(dkim, dmarc, action, reason)
        metrics.count(DECISIONS, decision=action, reason=reason)
        if action == "reject":
            domain = dmarc.from_domain or dmarc.record_domain or ""  # several From: the policy's
            return self._answer(replies.dmarc_reject(domain))
        if action == "tempfail":
            return self._answer(replies.DNS_TEMPFAIL)
        for index in indices_to_remove(message.ar_claims):
            self.chgheader(HEADER_NAME, index, None)
        value = header_value(config.authserv_id, message.spf, dkim, dmarc)
        # Postfix counts its own Received header (which milters never see) as the first one:
        # index 1 puts ours right below it, the two together the trace of this hop.
        self.addheader(HEADER_NAME, value, POSTFIX_OWN_RECEIVED)
        return Milter.CONTINUE

    def _verify_dkim(self) -> list[DkimVerdict]:
        message = self.message
        if not message.signature_count:
            return []
        if message.headers_truncated:
            return [
                DkimVerdict("permerror", None, None, None, None, None, "header block too large")
            ]
        budget = DnsBudget(self.config.dns, self.config.dns_timeout)
        verdicts = verify_signatures(
            message.headers, message.signature_tags, message.body, budget, self.config.dkim_l_policy
        )
        for _ in range(message.signature_count - len(message.signatures)):
            verdicts.append(
                DkimVerdict("policy", None, None, None, None, None, "too many signatures")
            )
        return verdicts

    def _policy(self, dkim: list[DkimVerdict], dmarc: DmarcVerdict) -> tuple[str, str]:
        """(accept | reject | tempfail, reason): record-only unless configured otherwise."""
        config = self.config
        if (
            config.dmarc_reject
            and dmarc.result == "fail"
            and dmarc.policy == "reject"
            and (dmarc.pct >= 100 or config.sample() * 100 < dmarc.pct)
        ):
            return "reject", "dmarc_reject"
        if config.tempfail_on_dns_error and (
            dmarc.result == "temperror" or any(v.result == "temperror" for v in dkim)
        ):
            return "tempfail", "dns_temperror_eom"
        return "accept", "verdicts_recorded"

    def _log_verdicts(
        self, dkim: list[DkimVerdict], dmarc: DmarcVerdict, action: str, reason: str
    ) -> None:
        spf = self.message.spf
        log_event(
            "milter.verdicts",
            logging.INFO if action == "accept" else logging.WARNING,
            queue_id=self._queue_id(),
            client_ip=self.client_ip,
            message_id=self.message.message_id,
            slugs=self.message.slugs or None,
            spf=spf.result if spf else None,
            dkim=[f"{v.result}:{v.domain}" for v in dkim] or "none",
            dkim_unsigned_bytes=[v.unsigned_bytes for v in dkim if v.unsigned_bytes] or None,
            dmarc=dmarc.result,
            from_domain=dmarc.from_domain,
            dmarc_policy=dmarc.policy,
            body_bytes=self.message.body_bytes,
            body_chunks=self.message.body_chunks,
            action=action,
            reason=reason,
        )

    # -- end -------------------------------------------------------------------------------

    def abort(self) -> int:
        self.message = MessageState()
        return Milter.CONTINUE

    def close(self) -> int:
        self.message = MessageState()
        return Milter.CONTINUE
