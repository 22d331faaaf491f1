import smtplib
from dataclasses import replace
from email import message_from_bytes, policy

import pytest

from shared.messaging.consumer import PermanentFailure
from services.notifications import emails
from services.notifications.mailer import MailNotSent, MailRejected, SmtpMailer
from tests.unit.notifications.fakes import order


class FakeSMTP:
    """smtplib.SMTP without the network. `replies` scripts the server: a command ("mail",
    "rcpt", "data") -> an exception it raises or the (code, reply) it answers; `extensions` are
    what its EHLO offers; with `keeps_then_fails`, DATA keeps the message before its failure
    (a reply lost on the way back)."""

    opened = []
    refuse: Exception | None = None
    replies: dict = {}
    extensions: set = set()
    keeps_then_fails = False

    def __init__(self, host, port, timeout):
        if FakeSMTP.refuse is not None:
            raise FakeSMTP.refuse
        self.messages = []  # (message, [recipient], MAIL FROM options)
        self.open = True
        self.script = None  # this connection's own `replies`, when a test sets them
        FakeSMTP.opened.append(self)

    def ehlo_or_helo_if_needed(self):
        self._answer("ehlo")

    def has_extn(self, name):
        return name in FakeSMTP.extensions

    def mail(self, sender, options=()):
        self._options = list(options)
        return self._answer("mail")

    def rcpt(self, to):
        self._to = to
        return self._answer("rcpt")

    def data(self, message):
        if FakeSMTP.keeps_then_fails:
            self.messages.append((message, [self._to], self._options))
        code, reply = self._answer("data")
        if code == 250:
            self.messages.append((message, [self._to], self._options))
        return code, reply

    def _answer(self, command):
        if not self.open:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        reply = (FakeSMTP.replies if self.script is None else self.script).get(command, (250, b"OK"))
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def quit(self):
        self.open = False

    close = quit


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
        ("data", (550, b"5.1.1 Mailbox unavailable")),
        ("rcpt", (550, b"no such user")),
        ("mail", (553, b"sender rejected")),
    ],
)
def test_a_5xx_reply_is_a_permanent_failure(smtp, email, command, reply):
    smtp.replies = {command: reply}
    with pytest.raises(MailRejected) as raised:
        mailer().send(email)
    assert isinstance(raised.value, PermanentFailure)


@pytest.mark.parametrize(
    "command, reply",
    [
        ("data", (451, b"4.3.0 try again later")),
        ("data", (421, b"4.3.2 closing")),
        ("rcpt", (450, b"mailbox busy")),
        ("mail", (421, b"4.3.2 closing")),
        ("data", smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out")),
        ("data", TimeoutError("timed out")),
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
    smtp.keeps_then_fails, smtp.replies = True, {"data": TimeoutError("timed out")}
    with pytest.raises(MailNotSent):
        sender.send(email)  # the server may have it: the consumer's retry decides, not this call
    assert len(smtp.opened) == 1 and len(smtp.opened[0].messages) == 2


def test_an_unreachable_server_is_retried(smtp, email):
    smtp.refuse = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(MailNotSent):
        mailer().send(email)


def test_after_a_failure_the_next_send_opens_a_fresh_connection(smtp, email):
    sender = mailer()
    smtp.replies = {"data": (451, b"try later")}
    with pytest.raises(MailNotSent):
        sender.send(email)
    smtp.replies = {}
    sender.send(email)
    assert len(smtp.opened) == 2 and len(smtp.opened[1].messages) == 1


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
