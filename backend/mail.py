"""Confirmation e-mails: the message, the outbox directory and optional SMTP delivery.

Every message is written to ``[backend].outbox`` as one RFC 5322 ``.eml`` file (the outbox is
the record, and what tests and developers read); when ``smtp_host`` is set it is also sent.
The link in it is built from configuration (``public_url``, else the gateway's first hostname
and HTTPS port), never from the request's Host header, which a client controls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from urllib.parse import urlencode

from gateway.config import Settings

log = logging.getLogger("backend.mail")

SMTP_TIMEOUT = 10.0


def public_base_url(settings: Settings) -> str:
    """The https origin clients reach the backend through (no trailing slash)."""
    if settings.backend.public_url:
        return settings.backend.public_url.rstrip("/")
    host = settings.gateway.hostnames[0]
    if ":" in host:
        host = f"[{host}]"
    port = settings.gateway.https_port
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


def confirmation_link(base_url: str, user_id: int, token: str) -> str:
    return f"{base_url}/user_confirm/{user_id}?{urlencode({'token': token})}"


def confirmation_message(*, sender: str, recipient: str, username: str, link: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "Confirm your e-mail address"
    message["Date"] = formatdate(localtime=False, usegmt=True)
    # An explicit domain: without one make_msgid asks DNS for this host's FQDN.
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    message.set_content(
        f"Hello {username},\n\n"
        "please confirm your e-mail address by opening this link within 24 hours:\n\n"
        f"{link}\n\n"
        "If you did not create an account, ignore this message.\n",
        # 7bit keeps the link whole on one line (RFC 5322 allows 998 characters); the default,
        # quoted-printable, would break it with "=" every 76 characters for whoever reads the
        # .eml file.  Everything in it is ASCII: the link, and usernames by their pattern.
        cte="7bit",
    )
    return message


class Mailer:
    def __init__(self, outbox: Path, smtp_host: str | None = None, smtp_port: int = 25) -> None:
        self.outbox = outbox
        self.smtp_host = smtp_host
        self.smtp_port = smtp_port

    async def store(self, message: EmailMessage) -> Path:
        """Write ``message`` to the outbox; raises OSError if it cannot be written."""
        return await asyncio.to_thread(self._write, message)

    async def deliver(self, message: EmailMessage) -> None:
        """Send ``message`` over SMTP if configured; failures are logged, not raised (the
        outbox copy stays the record)."""
        if self.smtp_host is None:
            return
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning(
                "SMTP delivery to %s via %s:%d failed: %s",
                message["To"],
                self.smtp_host,
                self.smtp_port,
                exc,
            )

    def _write(self, message: EmailMessage) -> Path:
        self.outbox.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(8)}.eml"
        final = self.outbox / name
        partial = self.outbox / f".{name}.partial"
        # 0600: the message holds a live confirmation token.  Written aside and renamed, so a
        # reader of the outbox never sees half a message.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(message.as_bytes())
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return final

    def _send(self, message: EmailMessage) -> None:
        assert self.smtp_host is not None
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=SMTP_TIMEOUT) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            smtp.send_message(message)
