"""The local SMTP server's store keeps a summary of every mail for listing: plain text, not the
parsed headers (email.policy.default's header values keep their parse trees: 37 KiB a message,
59 MiB held after a rehearsal's 1,601 emails)."""
from devtools.smtp_server import MailStore

MAIL = (b"From: Floodgate <orders@floodgate.test>\r\nTo: ann@example.test\r\nSubject: Your order 1 is confirmed\r\n"
        b"Message-ID: <ev-1@floodgate>\r\nX-Floodgate-Event: order.confirmed\r\nDate: Sun, 06 Dec 2026 19:00:00 +0000\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nYour order 1 is confirmed.\r\n")


def test_the_listing_keeps_plain_text_not_parsed_headers(tmp_path):
    store = MailStore(str(tmp_path / "mail"))
    for _ in range(3):
        store.add(MAIL, "orders@floodgate.test", ["ann@example.test"])
    listed = store.messages()
    assert len(listed) == 3
    assert {type(listed[0][name]) for name in ("message_id", "from", "subject", "event", "date", "text")} == {str}
    assert (listed[0]["subject"], listed[0]["message_id"], listed[0]["to"]) == (
        "Your order 1 is confirmed", "<ev-1@floodgate>", ["ann@example.test"])
