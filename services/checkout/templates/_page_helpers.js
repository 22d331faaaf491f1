  // Shared by the drop page and the control room (templates/_page_helpers.js): what the server
  // filled in (the drop, where the services are, its clock), problems from the services, shown
  // as text; times in the reader's own zone.
  // Everything shown comes from the services' answers and is written as text (textContent,
  // append of strings), never parsed as markup.
  const page = JSON.parse(document.getElementById("page-data").textContent);
  const dropId = page.drop_id;
  const services = page.services;
  const clockOffset = Date.parse(page.server_time) - Date.now();
  const serverNow = () => Date.now() + clockOffset;
  const store = window.sessionStorage;
  const $ = (id) => document.getElementById(id);

  // A signed-in session, kept in localStorage under `prefix`: one for all of the shop's tabs, so
  // that a tab opened or duplicated during the drop is signed in too, and two tabs never each
  // spend the same single-use refresh token (accounts takes that for a stolen one and ends the
  // session in both). The access token lasts minutes and a drop hours (a buyer signs in, then
  // waits in the line): the refresh token is exchanged for new tokens a minute before the
  // access token runs out, by one tab at a time (a Web Lock) and in the background, so that a
  // call the access token still covers never waits on accounts; and once more after a 401.
  const RENEW_AHEAD_MS = 60_000;
  const RENEW_TIMEOUT_MS = 5000;
  const SETTLE_MS = 500;  // how long a tab that waited for the renewal lock waits for the other tab's tokens
  class Session {
    constructor(prefix) {
      this.prefix = prefix;
      this.keys = Object.fromEntries(["token", "refresh", "expires", "email"].map((key) => [key, `${prefix}.${key}`]));
      this.renewing = null;
      this.failures = 0;
      this.retryAt = 0;  // after a renewal that failed (accounts away, busy): not before this
    }

    get token() { return localStorage.getItem(this.keys.token); }
    get refresh() { return localStorage.getItem(this.keys.refresh); }
    get expires() { return Number(localStorage.getItem(this.keys.expires)) || 0; }
    get email() { return localStorage.getItem(this.keys.email); }

    // The early-access tier the access token names (its `tier` claim, what inventory checks an
    // invite-only phase against), null without one. Read, not verified: the page only decides
    // what to offer, and every service checks the token's signature itself.
    get tier() {
      const token = this.token;
      try {
        const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        const tier = JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "="))).tier;
        return typeof tier === "string" ? tier : null;
      } catch (unreadable) {
        return null;
      }
    }

    // The refresh token is written last: another tab sees the writes one by one, and one that saw
    // the new refresh token with the old expiry renewed again with it (two renewals for one).
    keep(tokens, email) {
      localStorage.setItem(this.keys.token, String(tokens.access_token));
      localStorage.setItem(this.keys.expires, String(Date.now() + (Number(tokens.expires_in) || 0) * 1000));
      localStorage.setItem(this.keys.email, email || "");
      if (tokens.refresh_token) localStorage.setItem(this.keys.refresh, String(tokens.refresh_token));
      else localStorage.removeItem(this.keys.refresh);
    }

    forget() {
      for (const key of Object.values(this.keys)) localStorage.removeItem(key);
    }

    // Signing out ends the session at accounts too, so its refresh token renews nothing more
    // (best effort: the page forgets it whatever accounts answers).
    end() {
      const refresh = this.refresh;
      if (refresh) {
        fetch(services.accounts + "/sessions/logout", {
          method: "POST", mode: "cors", credentials: "omit", cache: "no-store", keepalive: true,
          headers: {"Content-Type": "application/json"}, body: JSON.stringify({refresh_token: refresh}),
        }).catch(() => {});
      }
      this.forget();
    }

    // Resolves once the refresh token is no longer `spent` (another tab's renewal reached this
    // one: a `storage` event), or after `ms`.
    changed(spent, ms) {
      return new Promise((resolve) => {
        if (this.refresh !== spent) return resolve();
        const done = () => {
          window.removeEventListener("storage", onStorage);
          clearTimeout(timer);
          resolve();
        };
        const onStorage = (event) => { if (event.key === this.keys.refresh) done(); };
        window.addEventListener("storage", onStorage);
        const timer = setTimeout(done, ms);
      });
    }

    // Before a call with the token: one that has run out is renewed first (the call would be
    // refused); one about to run out is renewed in the background, the call going ahead with it.
    async fresh() {
      if (!this.token || !this.refresh || Date.now() < this.retryAt) return;
      if (Date.now() >= this.expires) await this.renew();
      else if (Date.now() > this.expires - RENEW_AHEAD_MS) this.renew();
    }

    // "renewed", "refused" (the refresh token is spent or the session ended: sign in again) or
    // "failed" (accounts did not answer, or answered 429 or 5xx: the session stands, tried again
    // later, backing off up to 30 s).
    renew() {
      if (!this.refresh) return Promise.resolve("refused");
      if (!this.renewing && Date.now() < this.retryAt) return Promise.resolve("failed");  // backing off
      if (!this.renewing) {
        const spent = this.refresh;
        const run = async (waited) => {
          // another tab renewed while this one waited for the lock: its tokens are the session's.
          // Its writes reach this tab a moment after its lock is released: wait for them a little
          // (a renewal with the token it is spending was a second renewal, and a spent token's
          // reuse ends the session).
          if (waited) await this.changed(spent, SETTLE_MS);
          const refresh = this.refresh;
          if (refresh !== spent) return refresh ? "renewed" : "refused";
          try {
            const response = await fetch(services.accounts + "/sessions/refresh", {
              method: "POST", mode: "cors", credentials: "omit", cache: "no-store",
              headers: {Accept: "application/json", "Content-Type": "application/json"},
              body: JSON.stringify({refresh_token: refresh}), signal: AbortSignal.timeout(RENEW_TIMEOUT_MS),
            });
            if (response.status === 400 || response.status === 401) return "refused";
            if (!response.ok) return "failed";
            this.keep(await response.json(), this.email);
            return "renewed";
          } catch (error) {
            return "failed";
          }
        };
        const lock = `${this.prefix}.renewal`;
        const locked = navigator.locks
          ? navigator.locks.request(lock, {ifAvailable: true},
                                    (held) => held ? run(false) : navigator.locks.request(lock, () => run(true)))
          : run(false);
        this.renewing = locked.then((outcome) => {
          this.failures = outcome === "failed" ? this.failures + 1 : 0;
          this.retryAt = outcome === "failed"
            ? Date.now() + Math.min(30_000, 1000 * 2 ** this.failures) * (0.5 + Math.random() / 2) : 0;
          return outcome;
        }).finally(() => { this.renewing = null; });
      }
      return this.renewing;
    }
  }

  // One call to a service, JSON both ways: {status, data}, or a `Problem` thrown (problem+json,
  // its Retry-After). With `auth`, the session's token (renewed ahead, and once more after a
  // 401; `signedOut(reason)` is called when accounts refuses the renewal). Each call gives up
  // after `timeout` ms: one service not answering never holds a page's other figures.
  async function request(service, path, {method = "GET", body, auth = false, headers = {}, session = null,
                                         signedOut = () => {}, timeout = 10_000, unreachable = "The page tries again."} = {}) {
    const send = async () => {
      const init = {method, headers: {Accept: "application/json", ...headers}, mode: "cors", credentials: "omit",
                    cache: "no-store", signal: AbortSignal.timeout(timeout)};
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      if (auth) init.headers.Authorization = `Bearer ${session.token}`;
      try {
        const response = await fetch(services[service] + path, init);
        return {response, text: await response.text()};
      } catch (error) {
        const detail = error && error.name === "TimeoutError"
          ? `No answer within ${timeout / 1000} s: what this part of the page shows may not be current. ${unreachable}`
          : unreachable;
        throw new Problem(0, {detail}, null, `Cannot reach ${service}`);
      }
    };
    if (auth) await session.fresh();
    let {response, text} = await send();
    if (response.status === 401 && auth) {
      const renewal = await session.renew();
      if (renewal === "renewed") ({response, text} = await send());
      else if (renewal === "failed") {
        throw new Problem(0, {detail: `Your session could not be renewed just now. ${unreachable}`}, null,
                          "Cannot reach accounts");
      }
    }
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (error) { data = null; }
    if (!response.ok) {
      if (response.status === 401 && auth) signedOut("Your session has ended: sign in again.");
      throw new Problem(response.status, data, response.headers.get("Retry-After"), response.statusText);
    }
    return {status: response.status, data};
  }

  class Problem extends Error {
    constructor(status, body, retryAfter, fallbackTitle) {
      const doc = body && typeof body === "object" ? body : {};
      super(String(doc.title || fallbackTitle || `Error ${status}`));
      this.status = status;
      this.title = this.message;
      this.detail = typeof doc.detail === "string" ? doc.detail : "";
      this.type = typeof doc.type === "string" ? doc.type : "";
      this.errors = doc.errors && typeof doc.errors === "object" ? doc.errors : null;
      // an order the refusal names: the one an Idempotency-Key placed with another body
      this.orderId = typeof doc.order_id === "string" ? doc.order_id : null;
      const seconds = Number.parseInt(retryAfter || "", 10);
      this.retryAfter = Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 30) : 2;
    }
  }

  function showProblem(id, problem, extra) {
    const box = $(id);
    box.replaceChildren();
    if (!problem) { box.hidden = true; return; }
    const title = document.createElement("strong");
    title.textContent = problem.title;
    box.append(title);
    if (problem.detail && problem.detail !== problem.title) box.append(` ${problem.detail}`);
    if (extra) box.append(` ${extra}`);
    const messages = problem.errors ? fieldMessages(problem.errors, "") : [];
    if (messages.length) {
      const list = document.createElement("ul");
      for (const message of messages) {
        const item = document.createElement("li");
        item.textContent = message;
        list.append(item);
      }
      box.append(list);
    }
    box.hidden = false;
  }

  function fieldMessages(errors, prefix) {
    if (Array.isArray(errors)) return [`${prefix || "request"}: ${errors.map(String).join(" ")}`];
    if (!errors || typeof errors !== "object") return [`${prefix}: ${String(errors)}`];
    return Object.entries(errors).flatMap(([field, value]) =>
      fieldMessages(value, prefix && field !== "_schema" ? `${prefix}.${field}` : field === "_schema" ? prefix : field));
  }

  function when(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? "" : date.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "long"});
  }
