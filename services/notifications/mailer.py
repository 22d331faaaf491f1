"""Handing emails to an SMTP server.

`Mailer` is the port the handlers use; `SmtpMailer` is the adapter. A reply the server gives for
good (5xx) raises `MailRejected`, which parks the event as a dead letter at once; anything that
may pass later (4xx, no connection, a timeout, a login or STARTTLS problem, which are ours to fix
rather than the message's) raises `MailNotSent`, which the consumer retries with back-off.
"""
from __future__ import annotations

import smtplib
import ssl
import threading
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol

from shared.messaging.consumer import PermanentFailure
from services.notifications.config import Settings
from services.notifications.emails import Email


class MailRejected(PermanentFailure):
    """The SMTP server refused the message for good."""


class MailNotSent(Exception):
    """The message could not be handed over now; trying again later may succeed."""


class Mailer(Protocol):
    def send(self, email: Email) -> None:
        """Hand `email` over for delivery, or raise `MailRejected` / `MailNotSent`."""


class SmtpMailer:
    """Sends through one SMTP connection, kept open between messages and reopened when stale."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        timeout_seconds: float = 10.0,
        starttls: bool = False,
        username: str = "",
        password: str = "",
    ):
        self.host, self.port, self.sender = host, port, sender
        self.timeout_seconds = timeout_seconds
        self.starttls = starttls
        self.username, self.password = username, password
        self._connection: smtplib.SMTP | None = None
        # The consumer hands messages to one thread, but a reconnect may briefly overlap two.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "SmtpMailer":
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            settings.mail_from,
            timeout_seconds=settings.smtp_timeout_seconds,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
        )

    def send(self, email: Email) -> None:
        message = self.compose(email)
        with self._lock:
            connection = self._open()
            try:
                connection.send_message(message, to_addrs=[email.to])
            except smtplib.SMTPRecipientsRefused as error:
                self.close()
                code, reply = next(iter(error.recipients.values()))
                raise _refusal(code, reply) from error
            except smtplib.SMTPResponseException as error:
                self.close()
                raise _refusal(error.smtp_code, error.smtp_error) from error
            except (smtplib.SMTPException, OSError) as error:
                self.close()
                raise MailNotSent(f"SMTP {self.host}:{self.port}: {error!r}") from error

    def compose(self, email: Email) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = email.to
        message["Subject"] = email.subject
        message["Date"] = format_datetime(datetime.now(timezone.utc))
        message["Message-ID"] = email.message_id
        message["Auto-Submitted"] = "auto-generated"
        message["X-Floodgate-Event"] = email.event_type
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()

    def _open(self) -> smtplib.SMTP:
        if self._connection is not None:
            try:
                if self._connection.noop()[0] == 250:
                    return self._connection
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        try:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds)
            try:
                if self.starttls:
                    connection.starttls(context=ssl.create_default_context())
                if self.username:
                    connection.login(self.username, self.password)
            except BaseException:
                connection.close()
                raise
        except (smtplib.SMTPException, OSError) as error:
            raise MailNotSent(f"cannot open SMTP session with {self.host}:{self.port}: {error!r}") from error
        self._connection = connection
        return connection


def _refusal(code: int, reply: bytes | str) -> Exception:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    if 500 <= code < 600:
        return MailRejected(f"SMTP server refused the message: {code} {text}")
    return MailNotSent(f"SMTP server deferred the message: {code} {text}")
