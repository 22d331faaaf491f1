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

import json
import os
import smtplib
import uuid
from email.message import EmailMessage

import jwt
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
