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

  // A signed-in session, kept in sessionStorage under `prefix`. The access token lasts minutes and
  // a drop hours (a buyer signs in, then waits in the line): `fresh()` exchanges the refresh token
  // (once each) for new tokens a minute before the access token runs out, and `renew()` does after
  // a 401, before the page gives the session up.
  class Session {
    constructor(prefix) {
      this.keys = Object.fromEntries(["token", "refresh", "expires", "email"].map((key) => [key, `${prefix}.${key}`]));
      this.token = store.getItem(this.keys.token);
      this.refresh = store.getItem(this.keys.refresh);
      this.expires = Number(store.getItem(this.keys.expires)) || 0;
      this.email = store.getItem(this.keys.email);
      this.renewing = null;
    }

    keep(tokens, email) {
      this.token = String(tokens.access_token);
      this.refresh = tokens.refresh_token ? String(tokens.refresh_token) : null;
      this.expires = Date.now() + (Number(tokens.expires_in) || 0) * 1000;
      this.email = email;
      store.setItem(this.keys.token, this.token);
      if (this.refresh) store.setItem(this.keys.refresh, this.refresh); else store.removeItem(this.keys.refresh);
      store.setItem(this.keys.expires, String(this.expires));
      store.setItem(this.keys.email, email || "");
    }

    forget() {
      for (const key of Object.values(this.keys)) store.removeItem(key);
      this.token = this.refresh = this.email = null;
      this.expires = 0;
    }

    // Signing out ends the session at accounts too, so its refresh token renews nothing more
    // (best effort: the page forgets it whatever accounts answers).
    end() {
      if (this.refresh) {
        fetch(services.accounts + "/sessions/logout", {
          method: "POST", mode: "cors", credentials: "omit", cache: "no-store", keepalive: true,
          headers: {"Content-Type": "application/json"}, body: JSON.stringify({refresh_token: this.refresh}),
        }).catch(() => {});
      }
      this.forget();
    }

    async fresh() {
      if (this.token && this.refresh && Date.now() > this.expires - 60_000) await this.renew();
    }

    renew() {
      if (!this.refresh) return Promise.resolve(false);
      if (!this.renewing) {
        this.renewing = (async () => {
          try {
            const response = await fetch(services.accounts + "/sessions/refresh", {
              method: "POST", mode: "cors", credentials: "omit", cache: "no-store",
              headers: {Accept: "application/json", "Content-Type": "application/json"},
              body: JSON.stringify({refresh_token: this.refresh}),
            });
            if (!response.ok) return false;
            this.keep(await response.json(), this.email);
            return true;
          } catch (error) {
            return false;
          } finally {
            this.renewing = null;
          }
        })();
      }
      return this.renewing;
    }
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
