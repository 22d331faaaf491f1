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

from email_validator import EmailNotValidError, validate_email

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
        to, utf8 = envelope_recipient(email.to)
        message = self.compose(email, to)
        with self._lock, tracing.span("smtp send", "client", {
            "server.address": self.host, "server.port": self.port, "floodgate.email.event_type": email.event_type,
        }):
            reused = self._connection is not None
            try:
                self._send_on(self._open(), message, to, utf8)
            except _NotHandedOver:
                if not reused:
                    raise
                # The kept connection was closed by the server while idle (no NOOP before each
                # message: a round trip per email), before the message was handed over. Once
                # more, on a fresh connection.
                self._send_on(self._open(), message, to, utf8)

    def compose(self, email: Email, to: str) -> bytes:
        """The message as sent to `to` (the recipient as the envelope carries it): its headers,
        then a multipart/alternative of the text and the HTML, each UTF-8 in quoted-printable.
        Written out directly: the email package's generator spent more CPU folding these few
        headers than the rest of the sending took. Only a mailbox whose own name is not ASCII
        (sent with SMTPUTF8) puts UTF-8 in a header, as RFC 6532 has it."""
        boundary = f"=_floodgate_{uuid.uuid4().hex}"
        headers = (
            ("Subject", email.subject),
            ("Date", formatdate(usegmt=True)),
            ("Message-ID", email.message_id),
            ("Auto-Submitted", "auto-generated"),
            ("X-Floodgate-Event", email.event_type),
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
        )
        lines = [f"From: {_header_value(self._from)}", f"To: {to}",
                 *(f"{name}: {_header_value(value)}" for name, value in headers), ""]
        for subtype, body in (("plain", email.text), ("html", email.html)):
            # the line break before a boundary belongs to the boundary, not to the part
            lines += [f"--{boundary}", f'Content-Type: text/{subtype}; charset="utf-8"',
                      "Content-Transfer-Encoding: quoted-printable", "", _quoted_printable(body)]
        lines += [f"--{boundary}--", ""]
        return "\r\n".join(lines).encode("utf-8")

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()

    def _send_on(self, connection: smtplib.SMTP, message: bytes, to: str, utf8: bool) -> None:
        try:
            self._hand_over(connection, message, to, utf8)
        except BaseException:
            self.close()  # after any failure the session's state is unknown: never reuse it
            raise

    def _hand_over(self, connection: smtplib.SMTP, message: bytes, to: str, utf8: bool) -> None:
        """MAIL FROM and RCPT TO, then DATA. A connection lost before DATA has handed nothing
        over (`_NotHandedOver`: it may go again at once); from DATA on the server may have taken
        the message, so a failure there waits for the consumer's retry like any other."""
        server = f"SMTP {self.host}:{self.port}"
        try:
            connection.ehlo_or_helo_if_needed()
            if utf8 and not connection.has_extn("smtputf8"):
                raise MailRejected(f"{server} does not take mailboxes with non-ASCII names (no SMTPUTF8): {to}")
            _expect(connection.mail(self._envelope_sender, ["SMTPUTF8"] if utf8 else []), server)
            _expect(connection.rcpt(to), server)
        except (smtplib.SMTPServerDisconnected, OSError) as error:
            raise _NotHandedOver(f"{server}: {error!r}") from error
        except smtplib.SMTPResponseException as error:  # no answer to EHLO or HELO
            raise _refusal(error.smtp_code, error.smtp_error) from error
        except smtplib.SMTPException as error:
            raise MailNotSent(f"{server}: {error!r}") from error
        try:
            code, reply = connection.data(message)
        except (smtplib.SMTPServerDisconnected, OSError) as error:
            raise MailNotSent(f"{server}: lost during DATA, the server may have the message: {error!r}") from error
        except smtplib.SMTPResponseException as error:  # DATA itself refused, before the message
            raise _refusal(error.smtp_code, error.smtp_error) from error
        if code != 250:
            raise _refusal(code, reply)

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
    # Every line break becomes CRLF, a bare CR from event data too (SMTP allows no other).
    encoded = binascii.b2a_qp(text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8"), istext=True)
    return encoded.decode("ascii").replace("\n", "\r\n")


def envelope_recipient(address: str) -> tuple[str, bool]:
    """`address` as the SMTP envelope and the To header carry it, and whether it needs SMTPUTF8.
    smtplib speaks ASCII: an internationalised domain goes in its IDNA form (`xn--`), which every
    server takes; a mailbox whose own name is not ASCII needs a server that offers SMTPUTF8.
    An address no server could take is refused for good."""
    if address.isascii() and address.isprintable() and " " not in address:
        return address, False
    try:
        checked = validate_email(address, check_deliverability=False, test_environment=True)
    except EmailNotValidError as error:
        raise MailRejected(f"Not a deliverable address: {error}") from None
    return (checked.ascii_email, False) if checked.ascii_email else (checked.normalized, True)


class _NotHandedOver(MailNotSent):
    """The connection failed before the message was handed over (before DATA)."""


def _expect(answer: tuple[int, bytes], server: str) -> None:
    """A reply to MAIL FROM or RCPT TO: 250 (or 251, forwarded) goes on. A 421 there is a server
    closing the connection (an idle one, after its timeout), as good as a lost one."""
    code, reply = answer
    if code == 421:
        raise _NotHandedOver(f"{server} closed the session: {code} {reply!r}")
    if code not in (250, 251):
        raise _refusal(code, reply)


def _refusal(code: int, reply: bytes | str) -> Exception:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    if 500 <= code < 600:
        return MailRejected(f"SMTP server refused the message: {code} {text}")
    return MailNotSent(f"SMTP server deferred the message: {code} {text}")
