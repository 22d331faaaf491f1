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
import binascii
import uuid
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr
from typing import Protocol

from shared import tracing
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
        self._envelope_sender = parseaddr(sender)[1]
        self._from = formataddr(parseaddr(sender), charset="utf-8")  # a non-ASCII name, RFC 2047-encoded
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
        with self._lock, tracing.span("smtp send", "client", {
            "server.address": self.host, "server.port": self.port, "floodgate.email.event_type": email.event_type,
        }):
            reused = self._connection is not None
            try:
                self._send_on(self._open(), message, email.to)
            except _ConnectionLost:
                if not reused:
                    raise
                # The kept connection was closed by the server while idle (no NOOP before each
                # message: a round trip per email). Once more, on a fresh connection.
                self._send_on(self._open(), message, email.to)

    def compose(self, email: Email) -> bytes:
        """The message as sent: its headers, then a multipart/alternative of the text and the HTML,
        each UTF-8 in quoted-printable. Written out directly: the email package's generator spent
        more CPU folding these few headers than the rest of the sending took."""
        boundary = f"=_floodgate_{uuid.uuid4().hex}"
        headers = (
            ("From", self._from),
            ("To", email.to),
            ("Subject", email.subject),
            ("Date", formatdate(usegmt=True)),
            ("Message-ID", email.message_id),
            ("Auto-Submitted", "auto-generated"),
            ("X-Floodgate-Event", email.event_type),
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
        )
        lines = [f"{name}: {_header_value(value)}" for name, value in headers] + [""]
        for subtype, body in (("plain", email.text), ("html", email.html)):
            # the line break before a boundary belongs to the boundary, not to the part
            lines += [f"--{boundary}", f'Content-Type: text/{subtype}; charset="utf-8"',
                      "Content-Transfer-Encoding: quoted-printable", "", _quoted_printable(body)]
        lines += [f"--{boundary}--", ""]
        return "\r\n".join(lines).encode("ascii")

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()

    def _send_on(self, connection: smtplib.SMTP, message: bytes, to: str) -> None:
        try:
            connection.sendmail(self._envelope_sender, [to], message)
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


class SmtpMailers:
    """A `Mailer` for a consumer with several handler threads: one `SmtpMailer`, and so one SMTP
    connection, per thread."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._local = threading.local()
        self._mailers: list[SmtpMailer] = []
        self._lock = threading.Lock()

    def send(self, email: Email) -> None:
        mailer = getattr(self._local, "mailer", None)
        if mailer is None:
            mailer = self._local.mailer = SmtpMailer.from_settings(self._settings)
            with self._lock:
                self._mailers.append(mailer)
        mailer.send(email)

    def close(self) -> None:
        with self._lock:
            for mailer in self._mailers:
                mailer.close()


def _header_value(value: str) -> str:
    value = " ".join(value.splitlines())  # no header injection through event data
    if value.isascii() and len(value) <= 900:
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")  # RFC 2047 words, folded


def _quoted_printable(text: str) -> str:
    # Readable in a raw message, unlike base64; smtplib dot-stuffs the lines as it sends them.
    encoded = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return encoded.decode("ascii").replace("\n", "\r\n")


class _ConnectionLost(MailNotSent):
    """The connection failed under the message (not a reply about it)."""


def _refusal(code: int, reply: bytes | str) -> Exception:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    if 500 <= code < 600:
        return MailRejected(f"SMTP server refused the message: {code} {text}")
    return MailNotSent(f"SMTP server deferred the message: {code} {text}")
