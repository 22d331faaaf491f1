"""The local SMTP server the stack and the tests send their mail to.

    python -m devtools.smtp_server [--host 127.0.0.1] [--port 1025] [--control-port 8025] [--maildir var/stack/mail]

Every accepted message is kept in a Maildir. A small HTTP API on the control port lets tests read
the mail and rehearse an SMTP outage:

    GET    /messages[?to=address]  received mail, oldest first
    DELETE /messages               forget all of it
    GET    /faults                 the current fault
    POST   /faults                 {"mode": "none"|"421"|"451"|"550"|"refuse"|"stall"|"late", "seconds": N,
                                    "recipients": [address, ...]}

421 and 451 answer DATA with a temporary failure (421 also closes the connection), 550 with a
permanent one, `stall` waits `seconds` before answering DATA (a client that gives up meanwhile
leaves no message), `late` keeps the message at once and answers it `seconds` later (a server slow
to answer a message it has queued: a client that gives up and sends again mails it twice), and
`refuse` closes the listening socket until the mode changes again. With `recipients`, the fault
hits only mail to one of those addresses (not `refuse`); other mail is accepted. `GET /faults` also
says how many messages a stall or a late answer is holding right now (`stalled`), so a test can
act while a client waits mid-send.
"""
from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import mailbox
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller

RECEIVED_AT = "X-Floodgate-Received-At"
MAIL_FROM = "X-Floodgate-Mail-From"
RCPT_TO = "X-Floodgate-Rcpt-To"
REPLIES = {
    "421": "421 4.3.2 Service not available, closing transmission channel",
    "451": "451 4.3.0 Local error in processing, try again later",
    "550": "550 5.1.1 Mailbox unavailable",
}
MODES = ("none", "refuse", "stall", "late", *REPLIES)


@dataclass(frozen=True)
class Fault:
    mode: str = "none"
    seconds: float = 0.0
    recipients: tuple[str, ...] = ()

    def hits(self, rcpt_tos: list[str]) -> bool:
        if not self.recipients:
            return True
        return any(address.lower() in self.recipients for address in rcpt_tos)


class MailStore:
    """Received mail: a Maildir on disk, and a summary of each message in memory for listing.

    Parsing a message costs milliseconds, so it happens when the mail is listed, not while the
    SMTP client waits for its reply.
    """

    def __init__(self, path: str):
        # Maildir(create=True) leaves an existing empty folder without its subfolders.
        for part in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, part), exist_ok=True)
        self._maildir = mailbox.Maildir(path, create=False)
        self._arrived: list[str] = []  # keys of mail received and not yet summarised
        self._arrival_lock = threading.Lock()
        self._listing_lock = threading.Lock()
        summaries = [_summary(self._maildir.get_bytes(key)) for key in self._maildir.keys()]
        self._summaries = sorted(summaries, key=lambda summary: summary["received_at_ns"])

    def add(self, content: bytes, mail_from: str, rcpt_tos: list[str]) -> None:
        trace = (
            f"{RECEIVED_AT}: {time.time_ns()}\r\n"
            f"{MAIL_FROM}: {mail_from}\r\n"
            f"{RCPT_TO}: {', '.join(rcpt_tos)}\r\n"
        ).encode()
        # Maildir files end their lines the Unix way; SMTP delivered them with CRLF.
        raw = (trace + content).replace(b"\r\n", b"\n")
        with self._arrival_lock:
            self._arrived.append(self._maildir.add(raw))

    def messages(self, to: str | None = None) -> list[dict]:
        with self._listing_lock:
            with self._arrival_lock:
                arrived = [self._maildir.get_bytes(key) for key in self._arrived]
                self._arrived.clear()
            self._summaries.extend(_summary(raw) for raw in arrived)
            summaries = list(self._summaries)
        if to:
            summaries = [s for s in summaries if to.lower() in (address.lower() for address in s["to"])]
        return [{k: v for k, v in s.items() if k != "received_at_ns"} for s in summaries]

    def clear(self) -> None:
        with self._listing_lock, self._arrival_lock:
            self._maildir.clear()
            self._arrived.clear()
            self._summaries.clear()


def _summary(raw: bytes) -> dict:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return {
        # plain text: email.policy.default's header values are str subclasses that keep their
        # parse trees (37 KiB a message kept, 59 MiB for a rehearsal's 1,601 emails)
        "message_id": _text(message.get("Message-ID")),
        "from": _text(message.get("From")),
        "to": [a.strip() for a in str(message.get(RCPT_TO, "")).split(",") if a.strip()],
        "subject": _text(message.get("Subject")),
        "event": _text(message.get("X-Floodgate-Event")),
        "date": _iso_date(message.get("Date")),
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
        "received_at_ns": int(message.get(RECEIVED_AT, 0)),
    }


def _text(header) -> str | None:
    return None if header is None else str.__str__(header)


def _iso_date(header: str | None) -> str | None:
    if not header:
        return None
    try:
        return parsedate_to_datetime(str(header)).isoformat()
    except (TypeError, ValueError):
        return str(header)


class DeliveryHandler:
    """aiosmtpd hooks: answer DATA according to the current fault, else keep the message."""

    def __init__(self, store: MailStore):
        self.store = store
        self.fault = Fault()
        self.stalled = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        fault = self.fault if self.fault.hits(list(envelope.rcpt_tos)) else Fault()
        if fault.mode == "late":
            # Queued first, answered later: a client that gives up meanwhile cancels only the answer.
            self.store.add(envelope.original_content, envelope.mail_from, list(envelope.rcpt_tos))
            await self._hold(fault.seconds)
            return "250 2.0.0 Message accepted for delivery"
        if fault.mode == "stall":
            # A client that gives up meanwhile closes the connection, which cancels this
            # coroutine: its message is not kept, as a real server never completed it either.
            await self._hold(fault.seconds)
        elif fault.mode in REPLIES:
            if fault.mode == "421":
                asyncio.get_running_loop().call_soon(server.transport.close)
            return REPLIES[fault.mode]
        self.store.add(envelope.original_content, envelope.mail_from, list(envelope.rcpt_tos))
        return "250 2.0.0 Message accepted for delivery"

    async def _hold(self, seconds: float) -> None:
        self.stalled += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.stalled -= 1


class LocalMailServer:
    """The SMTP listener and its control API."""

    def __init__(self, host: str, port: int, control_port: int, maildir: str):
        self.host, self.port = host, port
        self.store = MailStore(maildir)
        self.handler = DeliveryHandler(self.store)
        self._smtp: Controller | None = None
        self._switch = threading.Lock()
        self.control = ThreadingHTTPServer((host, control_port), _control_api(self))
        self.control.daemon_threads = True

    def start(self) -> None:
        self._listen()
        threading.Thread(target=self.control.serve_forever, name="control-api", daemon=True).start()

    def stop(self) -> None:
        self.control.shutdown()
        self.control.server_close()
        with self._switch:
            if self._smtp is not None:
                self._smtp.stop()
                self._smtp = None

    def set_fault(self, fault: Fault) -> None:
        with self._switch:
            self.handler.fault = fault
            if fault.mode == "refuse" and self._smtp is not None:
                self._smtp.stop()
                self._smtp = None
            elif fault.mode != "refuse" and self._smtp is None:
                self._listen_locked()

    def _listen(self) -> None:
        with self._switch:
            self._listen_locked()

    def _listen_locked(self) -> None:
        # A stopped Controller's event loop is closed, so each (re)opening needs a fresh one.
        # SMTPUTF8, as Postfix 3 and most servers offer it: mail to a mailbox whose name is not ASCII
        self._smtp = Controller(self.handler, hostname=self.host, port=self.port, enable_SMTPUTF8=True)
        self._smtp.start()


def _control_api(server: LocalMailServer) -> type[BaseHTTPRequestHandler]:
    class ControlApi(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/messages":
                to = parse_qs(url.query).get("to", [None])[0]
                self._reply(200, server.store.messages(to))
            elif url.path == "/faults":
                self._reply(200, {**asdict(server.handler.fault), "stalled": server.handler.stalled})
            else:
                self._reply(404, {"error": "not found"})

        def do_DELETE(self):
            if urlsplit(self.path).path != "/messages":
                return self._reply(404, {"error": "not found"})
            server.store.clear()
            self._reply(200, {"deleted": True})

        def do_POST(self):
            if urlsplit(self.path).path != "/faults":
                return self._reply(404, {"error": "not found"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                mode = str(body.get("mode", "none"))
                seconds = float(body.get("seconds", 0))
                listed = body.get("recipients") or []
                if not isinstance(listed, list):
                    raise TypeError("recipients must be a list")
                recipients = tuple(str(address).lower() for address in listed)
            except (ValueError, TypeError, AttributeError):
                return self._reply(400, {"error": 'send {"mode": ..., "seconds": N, "recipients": [...]} as JSON'})
            if mode not in MODES or seconds < 0:
                return self._reply(400, {"error": f"mode must be one of {', '.join(MODES)}; seconds >= 0"})
            fault = Fault(mode, seconds, recipients)
            server.set_fault(fault)
            self._reply(200, asdict(fault))

        def _reply(self, status: int, document) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # tests poll often; keep the output to the start line
            pass

    return ControlApi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local SMTP server with an HTTP control API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--control-port", type=int, default=8025)
    parser.add_argument("--maildir", default="var/stack/mail", help="the folder make run uses")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = LocalMailServer(args.host, args.port, args.control_port, args.maildir)
    server.start()
    print(
        f"SMTP on {args.host}:{args.port}, control API on http://{args.host}:{args.control_port}, "
        f"mail kept in {args.maildir}",
        flush=True,
    )
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
