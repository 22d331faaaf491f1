"""The naive reference checkout the rehearsal compares Floodgate with. Not product code.

What a first version of a drop's checkout often looks like: one process, one sync worker, and
inside the request one transaction (stock - 1, order row) followed by the confirmation email sent
over SMTP before answering. In the rehearsal its SMTP server takes 1 s per message, as a busy mail
relay does on drop day, and the crowd waits behind it.

    gunicorn -w 1 -k sync 'benchmarks.rehearsal.naive_checkout:create_app()'
    env: NAIVE_DATABASE_URL, NAIVE_SMTP_HOST, NAIVE_SMTP_PORT

The bearer token is read without verification (the reference needs a buyer id, not security).
"""
from __future__ import annotations

import contextlib
import json
import os
import smtplib
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import jwt
import requests
import sqlalchemy as sa
from flask import Flask, jsonify, request

SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_stock (drop_id uuid PRIMARY KEY, available integer NOT NULL CHECK (available >= 0));
CREATE TABLE IF NOT EXISTS naive_orders (
    id uuid PRIMARY KEY, drop_id uuid NOT NULL, buyer_id text NOT NULL, idempotency_key text NOT NULL,
    shipping_address jsonb NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (buyer_id, idempotency_key));
"""


def prepare(database_url: str, drop_id: str, quantity: int) -> None:
    """Create the reference's tables and give it a drop of `quantity` units."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(sa.text(statement))
        conn.execute(sa.text("INSERT INTO naive_stock VALUES (:d, :q)"), {"d": drop_id, "q": quantity})
    engine.dispose()


@contextlib.contextmanager
def running(database_url: str, smtp_seconds: float, log_path: Path, maildir: Path) -> Iterator[str]:
    """The naive checkout under gunicorn (one sync worker) with an SMTP server of its own that
    takes `smtp_seconds` a message (0: at once); yields the checkout's base URL."""
    from devtools.stack import ROOT, free_ports

    py, gunicorn = sys.executable, str(Path(sys.executable).with_name("gunicorn"))
    ports = free_ports()
    env = dict(os.environ, PYTHONPATH=str(ROOT), NAIVE_DATABASE_URL=database_url, NAIVE_SMTP_PORT=str(ports["smtp"]))
    base_url = f"http://127.0.0.1:{ports['checkout']}"
    processes = []
    try:
        with open(log_path, "ab") as log:
            processes.append(subprocess.Popen(
                [py, "-m", "devtools.smtp_server", "--port", str(ports["smtp"]), "--control-port",
                 str(ports["smtp-control"]), "--maildir", str(maildir)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
            processes.append(subprocess.Popen(
                [gunicorn, "-w", "1", "-k", "sync", "--bind", f"127.0.0.1:{ports['checkout']}", "--log-level",
                 "warning", "benchmarks.rehearsal.naive_checkout:create_app()"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        fault = {"mode": "stall", "seconds": smtp_seconds} if smtp_seconds else {"mode": "none"}
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.post(f"http://127.0.0.1:{ports['smtp-control']}/faults", json=fault, timeout=2).raise_for_status()
                requests.get(f"{base_url}/", timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the naive checkout did not start; see {log_path}")
                time.sleep(0.3)
        yield base_url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def create_app() -> Flask:
    app = Flask("naive-checkout")
    engine = sa.create_engine(os.environ["NAIVE_DATABASE_URL"], pool_size=2)
    smtp_host = os.environ.get("NAIVE_SMTP_HOST", "127.0.0.1")
    smtp_port = int(os.environ["NAIVE_SMTP_PORT"])

    def problem(status: int, slug: str):
        response = jsonify(type=f"https://floodgate.example/problems/{slug}", title=slug, status=status)
        response.status_code = status
        response.content_type = "application/problem+json"
        return response

    @app.post("/orders")
    def place_order():
        claims = jwt.decode(request.headers.get("Authorization", "")[7:], options={"verify_signature": False})
        body = request.get_json()
        order_id = uuid.uuid4()
        with engine.begin() as conn:
            taken = conn.execute(
                sa.text("UPDATE naive_stock SET available = available - 1 WHERE drop_id = :d AND available >= 1"),
                {"d": body["drop_id"]},
            ).rowcount
            if not taken:
                return problem(409, "sold-out")
            conn.execute(
                sa.text("INSERT INTO naive_orders (id, drop_id, buyer_id, idempotency_key, shipping_address, status) "
                        "VALUES (:id, :d, :b, :k, CAST(:a AS jsonb), 'confirmed')"),
                {"id": order_id, "d": body["drop_id"], "b": claims["sub"], "k": request.headers["Idempotency-Key"],
                 "a": json.dumps(body["shipping_address"])},
            )
        message = EmailMessage()
        message["From"], message["To"] = "drops@floodgate.example", claims.get("email", "buyer@example.com")
        message["Subject"] = f"Your order {order_id} is confirmed"
        message.set_content(f"Order {order_id} is confirmed.")
        with smtplib.SMTP(smtp_host, smtp_port, timeout=30) as smtp:
            smtp.send_message(message)
        return jsonify(id=str(order_id), status="confirmed"), 201

    return app
