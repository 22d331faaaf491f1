"""Handing emails to an SMTP server.

`Mailer` is the port the handlers use; `SmtpMailer` is the adapter. Only a refusal of this
message or of its recipient (not one with an enhanced status 5.7.x, nor a 530 or 535: security
or policy, about our sending, `_about_our_sending`) raises `MailRejected`, which parks the event as a dead letter at once:
a 550, 551, 553 or 554 to RCPT TO (or a 501, the address's syntax), a 5xx to the message itself
(after its final "."), an address no server could take. Anything else raises `MailNotSent`, which
the consumer retries with back-off: what may pass later (4xx, no connection, a timeout) and what
is ours to fix rather than the message's, which would refuse every email of a drop alike: a login
or STARTTLS problem, any refusal of MAIL FROM (530 authentication required, our sender not
allowed), of EHLO or of the DATA command, and the other 5xx to RCPT TO (530; 552, which RFC 5321
has clients take as "too many recipients", a temporary failure).
"""
from __future__ import annotations

import re
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
from shared.messaging.consumer import DependencyDown, PermanentFailure
from services.notifications.config import Settings
from services.notifications.emails import Email


class MailRejected(PermanentFailure):
    """The SMTP server refused the message for good."""


class MailNotSent(Exception):
    """The message could not be handed over now; trying again later may succeed."""


class SmtpUnavailable(MailNotSent, DependencyDown):
    """No SMTP session can be opened (the server down or unreachable, STARTTLS or the login
    refused): every email would fail alike, so the consumer pauses instead of spending their
    attempts (`shared.messaging.consumer.DependencyDown`)."""


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
        data_reply_timeout_seconds: float = 60.0,
        starttls: bool = False,
        username: str = "",
        password: str = "",
    ):
        self.host, self.port, self.sender = host, port, sender
        self._envelope_sender = parseaddr(sender)[1]
        self._from = formataddr(parseaddr(sender), charset="utf-8")  # a non-ASCII name, RFC 2047-encoded
        self.timeout_seconds = timeout_seconds
        self.data_reply_timeout_seconds = data_reply_timeout_seconds
        self.starttls = starttls
        self.username, self.password = username, password
        self._connection: smtplib.SMTP | None = None
        # Each handler thread has its own mailer (`SmtpMailers`); the lock only keeps the session
        # whole should one be shared all the same.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "SmtpMailer":
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            settings.mail_from,
            timeout_seconds=settings.smtp_timeout_seconds,
            data_reply_timeout_seconds=settings.smtp_data_reply_timeout_seconds,
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
        """End the session with QUIT (the consumer is stopping)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()

    def _drop(self) -> None:
        # After a failure the session's state is unknown and the server may not answer at all: a
        # QUIT could wait a whole timeout more for nothing. The socket is just closed.
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _send_on(self, connection: smtplib.SMTP, message: bytes, to: str, utf8: bool) -> None:
        try:
            self._hand_over(connection, message, to, utf8)
        except BaseException:
            self._drop()  # after any failure the session's state is unknown: never reuse it
            raise

    def _hand_over(self, connection: smtplib.SMTP, message: bytes, to: str, utf8: bool) -> None:
        """MAIL FROM and RCPT TO, then DATA; what each refusal means is in the module's
        docstring. A connection lost before DATA has handed nothing over (`_NotHandedOver`: it
        may go again at once); from DATA on the server may have taken the message, so a failure
        there waits for the consumer's retry like any other."""
        server = f"SMTP {self.host}:{self.port}"
        try:
            connection.ehlo_or_helo_if_needed()
            if utf8 and not connection.has_extn("smtputf8"):
                raise MailRejected(f"{server} does not take mailboxes with non-ASCII names (no SMTPUTF8): {to}")
            _sender_accepted(connection.mail(self._envelope_sender, ["SMTPUTF8"] if utf8 else []), server)
            _recipient_accepted(connection.rcpt(to), server, to)
        # smtplib's errors are OSErrors too: its replies first, then a lost connection
        except smtplib.SMTPResponseException as error:  # EHLO and HELO refused
            raise _not_ours_to_park(server, "EHLO", error.smtp_code, error.smtp_error) from error
        except smtplib.SMTPServerDisconnected as error:
            raise _NotHandedOver(f"{server}: {error!r}") from error
        except smtplib.SMTPException as error:
            raise MailNotSent(f"{server}: {error!r}") from error
        except OSError as error:
            raise _NotHandedOver(f"{server}: {error!r}") from error
        try:
            code, reply = connection.docmd("data")
        except OSError as error:  # smtplib's SMTPServerDisconnected included; nothing handed over yet
            raise _NotHandedOver(f"{server}: lost at DATA, before the message: {error!r}") from error
        if code != 354:  # the server refused to take a message from us at all: not about this one
            raise _not_ours_to_park(server, "DATA", code, reply)
        try:
            code, reply = self._final_reply(connection, message)
        except OSError as error:
            raise MailNotSent(f"{server}: lost during DATA, the server may have the message: {error!r}") from error
        if code != 250:
            raise _refusal(code, reply) if not _about_our_sending(code, reply) else _not_ours_to_park(
                server, "the message", code, reply)

    def _final_reply(self, connection: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
        """Send the message, dot-stuffed and ended by ".", as smtplib's `data` does, and wait for
        the server's answer up to `data_reply_timeout_seconds`, not the commands' timeout: a
        server may take its time to queue a message (RFC 5321 has clients wait 10 minutes), and
        one that queued it and answers late would otherwise get it again from our retry."""
        stuffed = _DOT_STUFFED.sub(b"..", message)
        connection.send(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        connection.sock.settimeout(self.data_reply_timeout_seconds)
        try:
            return connection.getreply()
        finally:
            if connection.sock is not None:  # smtplib drops it after a failure
                connection.sock.settimeout(self.timeout_seconds)

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
            raise SmtpUnavailable(f"cannot open SMTP session with {self.host}:{self.port}: {error!r}") from error
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


def _sender_accepted(answer: tuple[int, bytes], server: str) -> None:
    """A reply to MAIL FROM: 250 goes on. A refusal there is of our sender, our login or our
    session, the same for every email: ours to fix, never a reason to park this one."""
    code, reply = answer
    if code != 250:
        raise _not_ours_to_park(server, "MAIL FROM", code, reply)


def _recipient_accepted(answer: tuple[int, bytes], server: str, to: str) -> None:
    """A reply to RCPT TO: 250 (or 251, forwarded) goes on. Only a refusal of this recipient
    parks the email; any other, 4xx or 5xx, is retried."""
    code, reply = answer
    if code in (250, 251):
        return
    if code in _RECIPIENT_REFUSED and not _about_our_sending(code, reply):
        raise _refusal(code, reply, f"the recipient {to}")
    raise _not_ours_to_park(server, "RCPT TO", code, reply)


def _about_our_sending(code: int, reply: bytes | str) -> bool:
    """Whether a 5xx says our sending is refused, not this email: 530 or 535 (authentication), or
    an enhanced status 5.7.x (security or policy: a relay not allowed, an unverified sender, SPF,
    DKIM or DMARC), which servers give at RCPT TO (Postfix's relay check) or after the message
    (Amazon SES): every email of a drop would be refused alike, so none is parked for it."""
    return code in (530, 535) or bool(_SECURITY_OR_POLICY.match(_text(reply)))


def _not_ours_to_park(server: str, command: str, code: int, reply: bytes | str) -> MailNotSent:
    """A reply that is not about this message: retried. A 421 is a server closing the connection
    (an idle one, after its timeout), as good as a lost one: before the message it goes again at once."""
    text = _text(reply)
    if code == 421 and command != "the message":
        return _NotHandedOver(f"{server} closed the session at {command}: {code} {text}")
    if code < 500:
        return MailNotSent(f"{server} deferred {command}: {code} {text}")
    return MailNotSent(f"{server} refused {command}, ours to fix rather than this email's: {code} {text}")


def _refusal(code: int, reply: bytes | str, what: str = "the message") -> Exception:
    text = _text(reply)
    if 500 <= code < 600:
        return MailRejected(f"SMTP server refused {what}: {code} {text}")
    return MailNotSent(f"SMTP server deferred {what}: {code} {text}")


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


# The refusals of RCPT TO that are about the recipient: no such mailbox or not here (550, 551),
# a mailbox name not allowed (553), refused by policy (554), an address not well formed (501:
# the address is the only argument we send).
_RECIPIENT_REFUSED = frozenset({501, 550, 551, 553, 554})
_DOT_STUFFED = re.compile(rb"(?m)^\.")  # a line of the message that starts with "." gets another
_SECURITY_OR_POLICY = re.compile(r"\s*5\.7\.\d")  # an enhanced status code's class and subject
