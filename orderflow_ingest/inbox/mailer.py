"""The sign-in email, through the inbox's own relay (ORDERFLOW_INBOX_SMTP_URL): a channel of
its own, never the ingest Postfix, so a sign-in mail can neither loop into ingestion nor wait
behind it."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

log = logging.getLogger(__name__)


def compose(mail_from: str, to: str, link: str, ttl_seconds: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = to
    message["Subject"] = "Your orderflow inbox sign-in link"
    message["Message-ID"] = make_msgid(domain=mail_from.rpartition("@")[2] or "localhost")
    message.set_content(
        "Someone (hopefully you) asked to sign in to the orderflow inbox.\n\n"
        f'Open this link within {ttl_seconds // 60} minutes, then press "Sign in":\n\n'
        f"{link}\n\n"
        "If it was not you, ignore this message: nothing happens without the button.\n"
    )
    return message


def send(smtp_url: str, message: EmailMessage, timeout: float = 30) -> None:
    """Hand the message to the relay; failures are logged (the page already answered)."""
    if not smtp_url:
        log.warning("ORDERFLOW_INBOX_SMTP_URL is empty: sign-in link not sent")
        return
    host, _, port = smtp_url.partition("://")[2].rstrip("/").rpartition(":")
    try:
        with smtplib.SMTP(host.strip("[]"), int(port), timeout=timeout) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as error:
        log.error("sign-in link not sent: relay %s: %s", smtp_url, type(error).__name__)
