import smtplib
from dataclasses import replace
from email import message_from_bytes, policy

import pytest

from shared.messaging.consumer import PermanentFailure
from services.notifications import emails
from services.notifications.mailer import MailNotSent, MailRejected, SmtpMailer
from tests.unit.notifications.fakes import order


class FakeSMTP:
    """smtplib.SMTP without the network: `refuse` and `reply` script the server."""

    opened = []
    refuse: Exception | None = None
    reply: Exception | None = None

    def __init__(self, host, port, timeout):
        if FakeSMTP.refuse is not None:
            raise FakeSMTP.refuse
        self.messages = []
        self.open = True
        FakeSMTP.opened.append(self)

    def noop(self):
        if not self.open:
            raise smtplib.SMTPServerDisconnected("gone")
        return 250, b"OK"

    def sendmail(self, from_addr, to_addrs, message):
        if not self.open:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        if FakeSMTP.reply is not None:
            raise FakeSMTP.reply
        self.messages.append((message, to_addrs))

    def quit(self):
        self.open = False

    close = quit


@pytest.fixture
def smtp(monkeypatch):
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    FakeSMTP.opened, FakeSMTP.refuse, FakeSMTP.reply = [], None, None
    return FakeSMTP


@pytest.fixture
def email():
    return emails.render("order.confirmed", emails.read("order.confirmed", order()), "ev-1")


def mailer():
    return SmtpMailer("127.0.0.1", 1025, "Floodgate <orders@floodgate.test>", timeout_seconds=1)


def test_sends_text_and_html_with_the_event_message_id(smtp, email):
    mailer().send(email)
    [(raw, to_addrs)] = smtp.opened[0].messages
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
    [(raw, _)] = smtp.opened[0].messages
    received = message_from_bytes(raw, policy=policy.default)
    assert received["Subject"] == subject
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_a_line_break_in_event_data_cannot_add_a_header(smtp, email):
    mailer().send(replace(email, subject="Hi\r\nBcc: everyone@example.com"))
    [(raw, _)] = smtp.opened[0].messages
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
    "reply",
    [
        smtplib.SMTPDataError(550, b"5.1.1 Mailbox unavailable"),
        smtplib.SMTPRecipientsRefused({"emilie@example.ca": (550, b"no such user")}),
        smtplib.SMTPSenderRefused(553, b"sender rejected", "orders@floodgate.test"),
    ],
)
def test_a_5xx_reply_is_a_permanent_failure(smtp, email, reply):
    smtp.reply = reply
    with pytest.raises(MailRejected) as raised:
        mailer().send(email)
    assert isinstance(raised.value, PermanentFailure)


@pytest.mark.parametrize(
    "reply",
    [
        smtplib.SMTPDataError(451, b"4.3.0 try again later"),
        smtplib.SMTPDataError(421, b"4.3.2 closing"),
        smtplib.SMTPRecipientsRefused({"emilie@example.ca": (450, b"mailbox busy")}),
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out"),
        TimeoutError("timed out"),
    ],
)
def test_a_4xx_reply_or_a_lost_connection_is_retried(smtp, email, reply):
    smtp.reply = reply
    with pytest.raises(MailNotSent) as raised:
        mailer().send(email)
    assert not isinstance(raised.value, PermanentFailure)


def test_an_unreachable_server_is_retried(smtp, email):
    smtp.refuse = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(MailNotSent):
        mailer().send(email)


def test_after_a_failure_the_next_send_opens_a_fresh_connection(smtp, email):
    sender = mailer()
    smtp.reply = smtplib.SMTPDataError(451, b"try later")
    with pytest.raises(MailNotSent):
        sender.send(email)
    smtp.reply = None
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
