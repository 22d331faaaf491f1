import re
import smtplib
from dataclasses import replace
from email import message_from_bytes, policy

import pytest

from shared.messaging.consumer import DependencyDown, PermanentFailure
from services.notifications import emails
from services.notifications.mailer import MailNotSent, MailRejected, SmtpMailer, SmtpUnavailable
from tests.unit.notifications.fakes import order


class FakeServer:
    """The far end of one connection, behind the socket smtplib writes to and reads from: it
    parses the commands smtplib sends, takes the message after DATA as a server does (the dots
    smtplib doubled undone) and queues the replies smtplib reads."""

    def __init__(self, connection: "FakeSMTP", timeout: float):
        self.connection = connection
        self.timeout = timeout
        self.commands = []  # every command's verb, as it arrived: "EHLO", "MAIL", ..., "QUIT"
        self.reply_timeouts = {}  # a command (or "message") -> the socket timeout its reply was read with
        self.messages = []  # (message, [recipient], MAIL FROM options)
        self.hung_up = False
        self.closed = False
        self._incoming = b""
        self._in_message = False
        self._replies = []  # (command, line or exception) as the client will read them

    # -- the socket smtplib holds ----------------------------------------------------------------
    def settimeout(self, seconds):
        self.timeout = seconds

    def makefile(self, mode):
        return self

    def sendall(self, data):
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        self._incoming += data
        self._take()

    def readline(self, limit=-1):
        if self.hung_up:
            return b""
        command, reply = self._replies.pop(0)
        self.reply_timeouts[command] = self.timeout
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self):
        self.closed = True

    # -- the server ------------------------------------------------------------------------------
    def _take(self):
        while True:
            if self._in_message:
                end = self._incoming.find(b"\r\n.\r\n")
                if end < 0:
                    return
                message, self._incoming, self._in_message = self._incoming[:end + 2], self._incoming[end + 5:], False
                self._receive(re.sub(rb"(?m)^\.", b"", message))
                continue
            line, found, rest = self._incoming.partition(b"\r\n")
            if not found:
                return
            self._incoming = rest
            self._command(line.decode("utf-8"))

    def _command(self, line):
        verb, _, argument = line.partition(" ")
        verb = verb.lower()
        self.commands.append(verb.upper())
        if verb == "ehlo":
            self._reply(verb, (250, "\n".join(["fake.test", *sorted(FakeSMTP.extensions)]).encode()))
        elif verb == "mail":
            self._options = argument.split(">", 1)[1].split()
            self._reply(verb, (250, b"2.1.0 OK"))
        elif verb == "rcpt":
            self._to = argument[argument.index("<") + 1:argument.rindex(">")]
            self._reply(verb, (250, b"2.1.5 OK"))
        elif verb == "data":
            self._in_message = self._reply(verb, (354, b"End data with <CR><LF>.<CR><LF>")) == 354
        elif verb == "quit":
            self._reply(verb, (221, b"2.0.0 Bye"))
        else:
            self._reply(verb, (250, b"OK"))

    def _receive(self, message):
        kept = (message, [self._to], self._options)
        if FakeSMTP.keeps_then_fails:
            self.messages.append(kept)
        if self._reply("message", (250, b"2.0.0 Ok: queued")) == 250 and not FakeSMTP.keeps_then_fails:
            self.messages.append(kept)

    def _reply(self, command, default):
        """Queue the scripted reply to `command`, or `default`; its code (None for an error)."""
        script = FakeSMTP.replies if self.connection.script is None else self.connection.script
        reply = script.get(command, default)
        if isinstance(reply, BaseException):
            self._replies.append((command, reply))
            return None
        code, text = reply
        lines = text.split(b"\n")
        for n, line in enumerate(lines):
            self._replies.append((command, b"%d%s%s\r\n" % (code, b" " if n == len(lines) - 1 else b"-", line)))
        return code


class FakeSMTP(smtplib.SMTP):
    """smtplib.SMTP whose socket is a `FakeServer`: smtplib's own commands, replies and errors,
    no network. `replies` scripts the server: a command ("ehlo", "mail", "rcpt", "data", "quit",
    or "message" for the reply after the message's final ".") -> the (code, reply) it answers or
    an exception reading that reply raises (an OSError there is a lost connection, as smtplib
    reports it); `extensions` are what its EHLO offers; with `keeps_then_fails`, the server keeps
    the message before the reply to it fails (a reply lost on the way back)."""

    opened = []
    refuse: Exception | None = None
    replies: dict = {}
    extensions: set = set()
    keeps_then_fails = False

    def __init__(self, host, port, timeout):
        if FakeSMTP.refuse is not None:
            raise FakeSMTP.refuse
        super().__init__(local_hostname="client.floodgate.test", timeout=timeout)  # no host: no connection
        self.script = None  # this connection's own `replies`, when a test sets them
        self.server = self.sock = FakeServer(self, timeout)
        FakeSMTP.opened.append(self)

    @property
    def messages(self):
        return self.server.messages

    @property
    def open(self):
        return self.sock is not None and not self.server.hung_up

    @open.setter
    def open(self, value):
        self.server.hung_up = not value  # the server hung up (an idle connection, after its timeout)


@pytest.fixture
def smtp(monkeypatch):
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    FakeSMTP.opened, FakeSMTP.refuse, FakeSMTP.replies = [], None, {}
    FakeSMTP.extensions, FakeSMTP.keeps_then_fails = set(), False
    return FakeSMTP


@pytest.fixture
def email():
    return emails.render("order.confirmed", emails.read("order.confirmed", order()), "ev-1")


def mailer():
    return SmtpMailer("127.0.0.1", 1025, "Floodgate <orders@floodgate.test>", timeout_seconds=1)


def test_sends_text_and_html_with_the_event_message_id(smtp, email):
    mailer().send(email)
    [(raw, to_addrs, _)] = smtp.opened[0].messages
    assert to_addrs == ["emilie@example.ca"]
    received = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=policy.default)  # as a mailbox keeps it
    assert received["Message-ID"] == "<ev-1@floodgate>"
    assert received["From"] == "Floodgate <orders@floodgate.test>"
    assert received["To"] == "emilie@example.ca"
    assert received["X-Floodgate-Event"] == "order.confirmed"
    assert received.get_body(("plain",)).get_content() == email.text
    assert received.get_body(("html",)).get_content() == email.html
    assert not received.defects


@pytest.mark.parametrize("subject", ["Votre commande est confirmée — Émilie", "Order " + "x" * 1200])
def test_a_subject_beyond_ascii_or_one_line_arrives_intact(smtp, email, subject):
    mailer().send(replace(email, subject=subject))
    [(raw, _, _)] = smtp.opened[0].messages
    received = message_from_bytes(raw, policy=policy.default)
    assert received["Subject"] == subject
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_a_line_break_in_event_data_cannot_add_a_header(smtp, email):
    mailer().send(replace(email, subject="Hi\r\nBcc: everyone@example.com"))
    [(raw, _, _)] = smtp.opened[0].messages
    received = message_from_bytes(raw, policy=policy.default)
    assert received["Bcc"] is None and received["Subject"] == "Hi Bcc: everyone@example.com"


def test_keeps_one_connection_and_reopens_it_when_the_server_hung_up(smtp, email):
    sender = mailer()
    sender.send(email)
    sender.send(email)
    assert len(smtp.opened) == 1
    smtp.opened[0].open = False
    sender.send(email)
    assert len(smtp.opened) == 2


@pytest.mark.parametrize(
    "command, reply",
    [
        ("message", (550, b"5.1.1 Mailbox unavailable")),
        ("message", (552, b"5.3.4 Message size exceeds fixed limit")),
        ("rcpt", (550, b"5.1.1 no such user")),
        ("rcpt", (551, b"5.1.6 User not local")),
        ("rcpt", (553, b"5.1.3 Mailbox name not allowed")),
        ("rcpt", (554, b"5.1.10 Recipient address has null MX")),
        ("rcpt", (501, b"5.1.3 Bad recipient address syntax")),
    ],
)
def test_a_refusal_of_the_recipient_or_of_the_message_is_a_permanent_failure(smtp, email, command, reply):
    smtp.replies = {command: reply}
    with pytest.raises(MailRejected) as raised:
        mailer().send(email)
    assert isinstance(raised.value, PermanentFailure)


@pytest.mark.parametrize(
    "command, reply",
    [
        ("rcpt", (554, b"5.7.1 Relay access denied")),
        ("rcpt", (550, b"5.7.1 Recipient address rejected: Access denied")),
        ("message", (550, b"5.7.26 Unauthenticated email from floodgate.test is not accepted due to DMARC policy")),
        ("message", (554, b"5.7.1 Message rejected as spam")),
        ("message", (535, b"Authentication credentials invalid")),
    ],
)
def test_a_security_or_policy_refusal_is_of_our_sending_and_retried_not_parked(smtp, email, command, reply):
    """An enhanced status 5.7.x (or 530/535), at RCPT TO or after the message: our relay, sender
    or signing refused, which every email of a drop from this one template and sender would meet."""
    smtp.replies = {command: reply}
    with pytest.raises(MailNotSent) as raised:
        mailer().send(email)
    assert not isinstance(raised.value, PermanentFailure)


@pytest.mark.parametrize(
    "replies",
    [
        {"mail": (530, b"5.7.0 Authentication required")},
        {"mail": (553, b"5.7.1 Sender address rejected: not owned by user")},
        {"mail": (550, b"5.7.1 Client host rejected: Access denied")},
        {"rcpt": (530, b"5.7.0 Authentication required")},
        {"rcpt": (552, b"5.5.3 Too many recipients")},
        {"rcpt": (503, b"5.5.1 Error: need MAIL command")},
        {"data": (554, b"5.5.1 Error: no valid recipients")},
        {"data": (503, b"5.5.1 Error: need RCPT command")},
        {"ehlo": (502, b"5.5.2 Error: command not recognized"), "helo": (554, b"5.7.1 Client host rejected")},
    ],
)
def test_a_refusal_of_our_sender_or_session_is_retried_not_parked(smtp, email, replies):
    # the same for every email of a drop: parking them all after one attempt would help nobody
    smtp.replies = replies
    with pytest.raises(MailNotSent) as raised:
        mailer().send(email)
    assert not isinstance(raised.value, PermanentFailure)
    assert not any(connection.messages for connection in smtp.opened)


def test_a_refused_data_command_is_said_to_be_one_not_a_message_the_server_may_have(smtp, email):
    # what admins read in the delivery log: smtplib's SMTPDataError is an OSError, and was
    # reported as a connection lost while the server may have had the message
    smtp.replies = {"data": (554, b"5.5.1 Error: no valid recipients")}
    with pytest.raises(MailNotSent) as raised:
        mailer().send(email)
    assert "refused DATA" in str(raised.value) and "554" in str(raised.value)
    assert "may have the message" not in str(raised.value)


@pytest.mark.parametrize(
    "command, reply",
    [
        ("message", (451, b"4.3.0 try again later")),
        ("message", (421, b"4.3.2 closing")),
        ("data", (451, b"4.3.0 try again later")),
        ("rcpt", (450, b"mailbox busy")),
        ("mail", (421, b"4.3.2 closing")),
        ("message", smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out")),
        ("message", TimeoutError("timed out")),
        ("mail", TimeoutError("timed out")),
    ],
)
def test_a_4xx_reply_or_a_lost_connection_is_retried(smtp, email, command, reply):
    smtp.replies = {command: reply}
    with pytest.raises(MailNotSent) as raised:
        mailer().send(email)
    assert not isinstance(raised.value, PermanentFailure)


def test_a_server_that_says_421_as_it_closes_an_idle_connection_gets_the_message_on_a_fresh_one(smtp, email):
    sender = mailer()
    sender.send(email)
    smtp.opened[0].script = {"mail": (421, b"4.4.2 mx Error: timeout exceeded")}  # Postfix, after 300 s idle
    sender.send(email)
    assert len(smtp.opened) == 2 and len(smtp.opened[0].messages) == 1 and len(smtp.opened[1].messages) == 1


def test_a_reply_lost_after_the_message_is_not_followed_by_a_second_copy_at_once(smtp, email):
    sender = mailer()
    sender.send(email)
    smtp.keeps_then_fails, smtp.replies = True, {"message": TimeoutError("timed out")}
    with pytest.raises(MailNotSent):
        sender.send(email)  # the server may have it: the consumer's retry decides, not this call
    assert len(smtp.opened) == 1 and len(smtp.opened[0].messages) == 2


def test_an_unreachable_server_is_a_dependency_down_so_the_consumer_pauses(smtp, email):
    smtp.refuse = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(SmtpUnavailable) as raised:
        mailer().send(email)
    assert isinstance(raised.value, MailNotSent) and isinstance(raised.value, DependencyDown)


def test_after_a_failure_the_next_send_opens_a_fresh_connection(smtp, email):
    sender = mailer()
    smtp.replies = {"message": (451, b"try later")}
    with pytest.raises(MailNotSent):
        sender.send(email)
    smtp.replies = {}
    sender.send(email)
    assert len(smtp.opened) == 2 and len(smtp.opened[1].messages) == 1


@pytest.mark.parametrize("failure", [{"message": (451, b"4.3.0 try later")}, {"rcpt": (550, b"5.1.1 no such user")},
                                     {"mail": (530, b"5.7.0 Authentication required")}])
def test_after_a_failure_the_connection_is_closed_without_a_quit_to_wait_for(smtp, email, failure):
    # a server that has stopped answering would hold the thread another whole timeout over a QUIT
    smtp.replies = {**failure, "quit": TimeoutError("timed out")}
    with pytest.raises((MailNotSent, MailRejected)):
        mailer().send(email)
    [connection] = smtp.opened
    assert connection.server.closed and "QUIT" not in connection.server.commands


def test_the_reply_to_the_message_is_awaited_longer_than_the_commands(smtp, email):
    # a server that queued the message and answers after the commands' timeout would get it
    # again from the consumer's retry: the buyer's second copy
    from services.notifications.config import Settings

    sender = SmtpMailer.from_settings(Settings(smtp_timeout_seconds=1, smtp_data_reply_timeout_seconds=60))
    sender.send(email)
    sender.send(email)
    [connection] = smtp.opened
    assert connection.server.reply_timeouts["message"] == 60
    # the second email's commands: the socket's timeout is back to the commands' one
    assert connection.server.reply_timeouts["mail"] == connection.server.reply_timeouts["data"] == 1
    assert len(connection.messages) == 2


def test_a_line_of_the_message_that_starts_with_a_dot_arrives_whole(smtp, email):
    mailer().send(replace(email, text=".hidden\n..\n.\nend"))
    [(raw, _, _)] = smtp.opened[0].messages
    received = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=policy.default)
    assert received.get_body(("plain",)).get_content() == ".hidden\n..\n.\nend"


def test_each_consumer_thread_sends_on_its_own_connection(smtp, email):
    import threading

    from services.notifications.config import Settings
    from services.notifications.mailer import SmtpMailers

    mailers = SmtpMailers(Settings(smtp_host="127.0.0.1", smtp_port=1025))
    threads = [threading.Thread(target=lambda: [mailers.send(email) for _ in range(3)]) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(smtp.opened) == 3 and all(len(connection.messages) == 3 for connection in smtp.opened)
    mailers.close()
    assert not any(connection.open for connection in smtp.opened)
    assert all(connection.server.commands[-1] == "QUIT" for connection in smtp.opened)  # stopping: said goodbye


def test_an_internationalised_domain_goes_in_its_ascii_form(smtp, email):
    mailer().send(replace(email, to="ann@bücher.de"))
    [(raw, to_addrs, options)] = smtp.opened[0].messages
    assert to_addrs == ["ann@xn--bcher-kva.de"] and options == []
    assert message_from_bytes(raw, policy=policy.default)["To"] == "ann@xn--bcher-kva.de"


def test_a_mailbox_with_a_non_ascii_name_goes_with_smtputf8_where_the_server_offers_it(smtp, email):
    smtp.extensions = {"smtputf8"}
    mailer().send(replace(email, to="josé@example.com"))
    [(raw, to_addrs, options)] = smtp.opened[0].messages
    assert to_addrs == ["josé@example.com"] and options == ["SMTPUTF8"]
    received = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=policy.default)
    assert received["To"] == "josé@example.com"
    assert received.get_body(("plain",)).get_content() == email.text


def test_a_non_ascii_mailbox_a_server_cannot_take_is_refused_and_the_next_buyer_still_gets_theirs(smtp, email):
    sender = mailer()
    with pytest.raises(MailRejected):
        sender.send(replace(email, to="josé@example.com"))
    sender.send(email)
    assert [to for connection in smtp.opened for _, [to], _ in connection.messages] == ["emilie@example.ca"]


@pytest.mark.parametrize("address", ["not an address", "ann@example.com\r\nBcc: everyone@example.com", "ann@bücher"])
def test_an_address_no_server_could_take_is_refused_for_good(smtp, email, address):
    with pytest.raises(MailRejected):
        mailer().send(replace(email, to=address))
    assert not any(connection.messages for connection in smtp.opened)


def test_an_unexpected_error_mid_session_drops_the_connection(smtp, email):
    sender = mailer()
    smtp.replies = {"rcpt": UnicodeEncodeError("ascii", "x", 0, 1, "not ASCII")}
    with pytest.raises(UnicodeEncodeError):
        sender.send(email)
    smtp.replies = {}
    sender.send(email)  # not on the first connection, whose mail transaction was left open
    assert len(smtp.opened) == 2 and not smtp.opened[0].messages and len(smtp.opened[1].messages) == 1


def test_a_bare_carriage_return_in_event_data_becomes_a_line_break(smtp, email):
    mailer().send(replace(email, text="Hello Ann\rX-Evil: 1", html="<p>Ann\r.\r</p>"))
    [(raw, _, _)] = smtp.opened[0].messages
    assert b"\r" not in raw.replace(b"\r\n", b"")
    received = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=policy.default)
    assert received.get_body(("plain",)).get_content() == "Hello Ann\nX-Evil: 1"
