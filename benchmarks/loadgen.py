"""A light closed-loop load generator: N keep-alive connections on one asyncio loop, raw HTTP/1.1,
every answer's status and latency recorded.

    python -m benchmarks.loadgen CONFIG.json

CONFIG names the target (`url`), the buyers' `tokens`, `connections`, `seconds` (and optionally
`stop_after_orders`, to stop sooner) and the `out` file, where one JSON document is written at the
end: the answers by status, the latencies (ms) of each status, and the generator's own CPU
seconds, so the benchmark can report them apart from the stack's. Status 0 is a connection that
failed or was cut; -1 a request still unanswered when the time was up (only answers within
`seconds` count). wrk (from Debian's packages) costs a little less, but it cannot tell the latency
of a 201 from that of a 429; this costs about 0.1 ms of CPU a request.

What each request is, by `request`:
- `order` (the default): `POST /orders` on `drop_id`. Each carries a fresh `Idempotency-Key` and its
  own street number (from `first_number`), so orders never collide on a key or on the per-address
  limit.
- `bearer`: `method` (default GET) on `url` with the token and no body (the waiting room's join,
  benchmarks/line.py).
- `get`: GET on `url`'s host of each of `paths` in turn, with no token (the waiting room's status
  edge, polled by the crowd); `paths` stand where `tokens` do below.
- `post`: the same with POST and no body (buyers approving their payments at the payment
  simulator, `make bench`'s payment phase).

Tokens go round-robin, unless `each_token_once` is set: then each is sent once, in order, the
generator stops when they run out (`exhausted` in the result), and `status_by_token` says what
each token's request was answered (null when it was not sent), so the caller knows which buyers
joined. `ready_file`, when given, is created once the configuration is loaded, just before the
first request, so a caller can time the load alone.

A 429 or 503 is answered as a buyer would, by waiting its `Retry-After` (at most
`max_retry_after` seconds) on that connection before the next request.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit


def _order(host: str, path: str, token: str, drop_id: str, number: int) -> bytes:
    body = (
        '{"drop_id":"%s","quantity":1,"shipping_address":{"name":"Alex Tremblay","street_address":'
        '"%d Sussex Drive","city":"Ottawa","postal_code":"K1A 0B1","country_area":"ON","country_code":"CA"}}'
        % (drop_id, number)
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Idempotency-Key: {uuid.uuid4().hex}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _plain(host: str, path: str, method: str) -> bytes:
    length = "Content-Length: 0\r\n" if method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}\r\n".encode()


def _bearer(host: str, path: str, token: str, method: str) -> bytes:
    length = "Content-Length: 0\r\n" if method in ("POST", "PUT", "PATCH") else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n{length}\r\n".encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers


async def _connection(config: dict, deadline: float, tokens, numbers, answers: dict, by_token: list | None) -> None:
    target = urlsplit(config["url"])
    host, port, path = target.hostname, target.port or 80, target.path or "/orders"
    kind, method = config.get("request", "order"), config.get("method", "GET").upper()
    max_pause = float(config.get("max_retry_after", 2.0))
    enough = int(config.get("stop_after_orders") or 0)
    reader = writer = None
    while time.monotonic() < deadline and not (enough and len(answers.get(201, ())) >= enough):
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                answers.setdefault(0, []).append(0.0)
                await asyncio.sleep(0.05)
                continue
        taken = next(tokens, None)
        if taken is None:
            break  # each token once, and none left
        index, token = taken
        if kind == "order":
            request = _order(f"{host}:{port}", path, token, config["drop_id"], next(numbers))
        elif kind in ("get", "post"):
            request = _plain(f"{host}:{port}", token, kind.upper())  # here the "token" is the path
        else:
            request = _bearer(f"{host}:{port}", path, token, method)
        started = time.perf_counter()
        try:
            writer.write(request)
            status, headers = await asyncio.wait_for(_read_response(reader), max(0.001, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            answers.setdefault(-1, []).append((time.perf_counter() - started) * 1000)  # unanswered at the end
            if by_token is not None:
                by_token[index] = -1
            break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            answers.setdefault(0, []).append((time.perf_counter() - started) * 1000)
            if by_token is not None:
                by_token[index] = 0
            writer.close()
            reader = writer = None
            continue
        answers.setdefault(status, []).append((time.perf_counter() - started) * 1000)
        if by_token is not None:
            by_token[index] = status
        if headers.get("connection", "").lower() == "close":
            writer.close()
            reader = writer = None
        if status in (429, 503):
            try:
                pause = float(headers.get("retry-after", "1"))
            except ValueError:
                pause = 1.0
            await asyncio.sleep(min(max_pause, max(0.0, pause), max(0.0, deadline - time.monotonic())))
    if writer is not None:
        writer.close()


async def run(config: dict) -> dict:
    """Drive the target for `seconds`; the answers by status with their latencies."""
    once = bool(config.get("each_token_once"))
    items = config["paths"] if config.get("request") in ("get", "post") else config["tokens"]
    indexed = enumerate(items)
    tokens = indexed if once else itertools.cycle(indexed)
    by_token = [None] * len(items) if once else None
    numbers = itertools.count(int(config.get("first_number", 100)))
    answers: dict[int, list[float]] = {}
    if config.get("ready_file"):
        Path(config["ready_file"]).touch()
    started = time.monotonic()
    deadline = started + float(config["seconds"])
    await asyncio.gather(*(
        _connection(config, deadline, tokens, numbers, answers, by_token) for _ in range(int(config["connections"]))
    ))
    result = {"seconds": time.monotonic() - started, "answers": {str(k): v for k, v in answers.items()}}
    if once:
        result["status_by_token"] = by_token
        result["exhausted"] = by_token[-1] is not None if by_token else True
    return result


def main() -> None:
    config = json.loads(open(sys.argv[1]).read())
    result = asyncio.run(run(config))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    with open(config["out"], "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
