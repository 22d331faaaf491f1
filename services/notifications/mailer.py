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
from email import charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Protocol

from shared.messaging.consumer import PermanentFailure
from services.notifications.config import Settings
from services.notifications.emails import Email


_UTF8_QP = charset.Charset("utf-8")
_UTF8_QP.body_encoding = charset.QP  # readable in a raw message, unlike base64


class MailRejected(PermanentFailure):
    """The SMTP server refused the message for good."""


class MailNotSent(Exception):
    """The message could not be handed over now; trying again later may succeed."""


class Mailer(Protocol):
    def send(self, email: Email) -> None:
        """Hand `email` over for delivery, or raise `MailRejected` / `MailNotSent`."""


class SmtpMailer:
    """Sends through one SMTP connection, kept open between messages and reopened when the
    server closed it."""

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
            reused = self._connection is not None
            try:
                self._send_on(self._open(), message, email.to)
            except _ConnectionLost:
                if not reused:
                    raise
                # The kept connection was closed by the server while idle (no NOOP before each
                # message: a round trip per email). Once more, on a fresh connection.
                self._send_on(self._open(), message, email.to)

    def compose(self, email: Email) -> Message:
        # email.mime with the compat32 policy: the same message as EmailMessage builds, at a
        # quarter of its CPU (the modern policy parses every header it is given).
        message = MIMEMultipart("alternative")
        message["From"] = self.sender
        message["To"] = email.to
        message["Subject"] = email.subject if email.subject.isascii() else Header(email.subject, "utf-8")
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = email.message_id
        message["Auto-Submitted"] = "auto-generated"
        message["X-Floodgate-Event"] = email.event_type
        message.attach(MIMEText(email.text, "plain", _UTF8_QP))
        message.attach(MIMEText(email.html, "html", _UTF8_QP))
        return message

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()

    def _send_on(self, connection: smtplib.SMTP, message: Message, to: str) -> None:
        try:
            connection.send_message(message, to_addrs=[to])
        except smtplib.SMTPRecipientsRefused as error:
            self.close()
            code, reply = next(iter(error.recipients.values()))
            raise _refusal(code, reply) from error
        except smtplib.SMTPResponseException as error:
            self.close()
            raise _refusal(error.smtp_code, error.smtp_error) from error
        except (smtplib.SMTPServerDisconnected, OSError) as error:
            self.close()
            raise _ConnectionLost(f"SMTP {self.host}:{self.port}: {error!r}") from error
        except smtplib.SMTPException as error:
            self.close()
            raise MailNotSent(f"SMTP {self.host}:{self.port}: {error!r}") from error

    def _open(self) -> smtplib.SMTP:
        if self._connection is not None:
            return self._connection
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


class _ConnectionLost(MailNotSent):
    """The connection failed under the message (not a reply about it)."""


def _refusal(code: int, reply: bytes | str) -> Exception:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    if 500 <= code < 600:
        return MailRejected(f"SMTP server refused the message: {code} {text}")
    return MailNotSent(f"SMTP server deferred the message: {code} {text}")
