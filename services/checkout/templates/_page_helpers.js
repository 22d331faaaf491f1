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
