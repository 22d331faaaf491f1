"""The crowd's access tokens, before the opening: registered and signed in, in parallel (argon2id
makes each one cost), or, for a large crowd on a development stack, minted (see `mint`)."""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import requests

PASSWORD = "rehearsal password, dev only"


def _with_retries(session: requests.Session, url: str, body: dict, ok: int) -> requests.Response:
    for attempt in range(30):
        try:
            response = session.post(url, json=body, timeout=30)
        except requests.RequestException:
            time.sleep(0.2 * (attempt + 1))
            continue
        if response.status_code == ok:
            return response
        if response.status_code in (429, 503):
            time.sleep(float(response.headers.get("Retry-After") or 0.5))
            continue
        response.raise_for_status()
    raise RuntimeError(f"{url}: no answer {ok} after 30 attempts")


def sign_up(accounts_url: str, count: int, threads: int = 8, progress=print) -> list[tuple[str, str]]:
    """`count` new buyers, each registered and signed in: [(email, access token)]."""
    local = threading.local()
    run = uuid.uuid4().hex[:6]
    done, lock, started = [0], threading.Lock(), time.monotonic()

    def one(index: int) -> tuple[str, str]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        email = f"buyer-{run}-{index}@rehearsal.example"
        _with_retries(session, f"{accounts_url}/accounts", {"email": email, "password": PASSWORD, "name": f"Buyer {index}"}, 201)
        token = _with_retries(session, f"{accounts_url}/sessions", {"email": email, "password": PASSWORD}, 201).json()["access_token"]
        with lock:
            done[0] += 1
            if done[0] % 25 == 0 or done[0] == count:
                elapsed = time.monotonic() - started
                progress(f"\r  buyers signed in: {done[0]:>6}/{count}  ({done[0] / elapsed:5.1f}/s)")
        return email, token

    with ThreadPoolExecutor(threads) as pool:
        buyers = list(pool.map(one, range(count)))
    progress("\n")
    return buyers


def mint(rig, count: int, lifetime_seconds: int) -> list[tuple[str, str]]:
    """`count` buyers' access tokens signed with the stack's own signing key, as accounts signs
    them (benchmarks/line.py's `mint_buyers`: development KEK only; the accounts exist only in
    their tokens): [(email, access token)]."""
    from benchmarks.line import mint_buyers  # imports the rehearsal's cli: not at module level

    tokens = mint_buyers(rig, count, lifetime_seconds)
    return [(jwt.decode(token, options={"verify_signature": False}).get("email", ""), token) for token in tokens]
