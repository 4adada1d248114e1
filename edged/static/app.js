// edged status page: signs in, reads /v1/status, follows /v1/events, acts for a manager.
// No framework and no build step. Every value from the daemon is set as text, never as HTML.
"use strict";

const KINDS = ["payment", "refund", "order", "inventory", "terminal", "sync", "alert",
               "pickup", "shopify"];
const state = { status: null, offset: 0, source: null, refreshing: false, again: false,
                drops: 0, actions: false, notes: {} };  // notes: what a manager is typing, by item

// -- small helpers ------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fill(id, ...children) { $(id).replaceChildren(...children.flat()); }

const digitsCache = {};
function money(amount, currency) {
  if (amount === null || amount === undefined) return "–";
  let digits = digitsCache[currency];
  if (digits === undefined) {
    try {
      digits = new Intl.NumberFormat("en", { style: "currency", currency })
        .resolvedOptions().maximumFractionDigits;
    } catch (e) { digits = 2; }
    digitsCache[currency] = digits;
  }
  const sign = amount < 0 ? "-" : "";
  const abs = Math.abs(amount);
  const whole = Math.floor(abs / 10 ** digits);
  const frac = digits ? "." + String(abs % 10 ** digits).padStart(digits, "0") : "";
  return `${sign}${whole.toLocaleString("en")}${frac} ${currency}`;
}

function serverNow() { return Date.now() + state.offset; }

function age(iso) {
  if (!iso) return "–";
  let s = Math.max(0, Math.floor((serverNow() - Date.parse(iso)) / 1000));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

function ageNode(iso) { return el("span", { class: "age", "data-since": iso || "" }, age(iso)); }

function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

function stateNode(value) { return el("span", { class: `state ${value}` }, value); }

function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  // letters only: a long run of digits could look like a card number and be refused
  return "page-" + Array.from(bytes, (b) =>
    String.fromCharCode(97 + (b >> 4), 97 + (b & 15))).join("");
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.headers["Idempotency-Key"] = newKey();
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) { showSignIn("Your session ended; sign in again."); }
  if (!response.ok) {
    const message = data && data.error ? `${data.error.message} (${data.error.code})`
      : `${method} ${path}: HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

// -- signing in ---------------------------------------------------------------------------

function showSignIn(message) {
  if (state.source) { state.source.close(); state.source = null; }
  $("main").hidden = true;
  $("nav").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  setLive("pending", "Signed out");
  showFingerprint();
  $("token").focus();
}

// A pairing code never leaves the browser: the sign-in sends HMAC-SHA256 of the daemon's
// certificate fingerprint keyed by the code, as a register does (POST /v1/pair).
async function pairingProof(code) {
  const info = await (await fetch("/v1/pair", { credentials: "same-origin" })).json();
  const utf8 = new TextEncoder();
  const key = await crypto.subtle.importKey(
    "raw", utf8.encode(code.toUpperCase().replace(/[-\s]/g, "")),
    { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = await crypto.subtle.sign("HMAC", key, utf8.encode(info.fingerprint.toLowerCase()));
  return Array.from(new Uint8Array(mac), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function showFingerprint() {
  try {
    const info = await (await fetch("/v1/pair", { credentials: "same-origin" })).json();
    $("signin-fingerprint").textContent = info.tls
      ? `This daemon's certificate: ${info.short_fingerprint}. Check that your browser shows`
        + " the same SHA-256 fingerprint, and that it begins as `edged pair` printed."
      : "";
  } catch (e) { $("signin-fingerprint").textContent = ""; }
}

async function signIn(event) {
  event.preventDefault();
  const secret = $("token").value.trim();
  const name = $("pair-name").value.trim();
  // a token starts edg_; anything else is a pairing code from `edged pair`
  let body = { token: secret };
  if (!secret.startsWith("edg_")) {
    body = { proof: await pairingProof(secret) };
    if (name) body.name = name;
  }
  $("signin-error").textContent = "";
  const response = await fetch("/session", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  $("token").value = "";
  if (!response.ok) {
    $("signin-error").textContent = data && data.error ? data.error.message
      : `sign-in failed (HTTP ${response.status})`;
    return;
  }
  start(data);
}

async function signOut() {
  await fetch("/session", { method: "DELETE", credentials: "same-origin" });
  showSignIn("Signed out.");
}

function start(who) {
  state.actions = !!who.actions;
  $("viewer").textContent = `${who.name} (${who.scope}${who.actions ? "" : ", view only"})`;
  document.body.classList.toggle("viewonly", !state.actions);
  $("signin").hidden = true;
  $("main").hidden = false;
  $("nav").hidden = false;
  connect();
  refresh();
}

// -- live: the event stream ---------------------------------------------------------------

function setLive(kind, text) {
  const live = $("live");
  live.className = `live ${kind}`;
  live.textContent = text;
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/v1/events");
  state.source = source;
  source.onopen = () => {
    const when = new Date().toLocaleTimeString();
    setLive("ok", state.drops ? `Live (reconnected at ${when})` : "Live");
    refresh();  // whatever happened while the stream was down
  };
  for (const kind of KINDS) source.addEventListener(kind, () => refresh());
  source.onerror = () => {
    if (state.source !== source) return;
    state.drops += 1;
    const when = new Date().toLocaleTimeString();
    setLive("lost", `Live updates lost at ${when}; reconnecting…`);
    source.close();
    state.source = null;
    setTimeout(reconnect, 1000);
  };
}

async function reconnect() {
  if (state.source) return;
  try {
    const response = await fetch("/session", { credentials: "same-origin" });
    if (response.status === 401) { showSignIn("Your session ended; sign in again."); return; }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    connect();
  } catch (e) {
    setLive("lost", `Live updates lost; the daemon does not answer, trying again…`);
    setTimeout(reconnect, 2000);
  }
}

// One read at a time; events during a read ask for one more read after it.
async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    do {
      state.again = false;
      const status = await api("GET", "/v1/status");
      state.offset = Date.parse(status.now) - Date.now();
      state.status = status;
      render(status);
    } while (state.again);
  } catch (e) {
    $("action-error").textContent = `Could not read the status: ${e.message}`;
  } finally {
    state.refreshing = false;
  }
}

setInterval(() => {
  for (const node of document.querySelectorAll("[data-since]")) {
    const since = node.getAttribute("data-since");
    if (since) node.textContent = age(since);
  }
}, 1000);

// -- rendering ----------------------------------------------------------------------------

function render(s) {
  // a live refresh rebuilds the lists: a note being typed keeps its text, caret and focus
  const active = document.activeElement;
  const typing = active && active.dataset ? active.dataset.note : undefined;
  const caret = typing ? active.selectionStart : null;
  $("store-id").textContent = s.store.id;
  $("report-link").href = `/report?date=${encodeURIComponent(s.today.date)}`;
  renderToday(s.today);
  renderTerminals(s.terminals);
  renderDestinations(s.sync.destinations);
  renderShopify(s.sync.shopify);
  renderPickups(s.pickups || []);
  renderOffline(s.sync.offline);
  renderStorage(s.storage);
  renderUnknownPayments(s.unknown_payments);
  renderUnknownRefunds(s.unknown_refunds);
  renderDeadJobs(s.dead_jobs);
  renderAlerts(s.alerts);
  renderPayments(s.recent_payments);
  const present = new Set([...document.querySelectorAll("input.note")].map((n) => n.dataset.note));
  for (const label of Object.keys(state.notes)) if (!present.has(label)) delete state.notes[label];
  if (typing) {
    const again = [...document.querySelectorAll("input.note")].find((n) => n.dataset.note === typing);
    if (again) { again.focus(); again.setSelectionRange(caret, caret); }
  }
}

function empty(text) { return el("p", { class: "empty" }, text); }

function renderToday(today) {
  $("today-date").textContent = today.date;
  if (!today.currencies.length) { fill("today", empty("No payments yet today.")); return; }
  fill("today", el("div", { class: "takings" }, today.currencies.map((c) => el("div",
    { id: `today-${c.currency}` },
    el("div", { class: "big takings-total" }, money(c.takings.total, c.currency)),
    el("div", { class: "muted" },
      `${c.takings.count} payments · refunds ${money(c.refunds.total, c.currency)} · net `
      + money(c.net, c.currency)),
    el("div", { class: "muted" }, c.by_method.map((m) =>
      `${m.method} ${money(m.total, m.currency || c.currency)}`).join(" · "))))));
}

function renderTerminals(terminals) {
  if (!terminals.length) { fill("terminals", empty("No terminals configured.")); return; }
  fill("terminals", el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Lane"), el("th", {}, "State"),
      el("th", {}, "Busy with"), el("th", {}, "Last seen"))),
    el("tbody", {}, terminals.map((t) => el("tr", { id: `terminal-${t.id}` },
      el("td", {}, el("span", { class: "what" }, t.id), el("div", { class: "muted" }, t.kind)),
      el("td", {}, el("span", { class: `state ${t.state}` }, t.state),
        t.detail ? el("div", { class: "muted detail" }, t.detail) : null),
      el("td", { class: "busy" }, t.busy_with || "–"),
      el("td", { class: "seen" }, t.last_seen ? ageNode(t.last_seen) : "never", " ago"))))));
}

function renderDestinations(destinations) {
  if (!destinations.length) {
    fill("destinations", empty("No cloud destination is configured: nothing is queued."));
    return;
  }
  fill("destinations", destinations.map((d) => {
    const breaker = d.breaker ? d.breaker.state : "idle";
    return el("div", { class: "dest", id: `dest-${d.destination}` },
      el("div", {}, el("span", { class: "what" }, d.destination), " ",
        el("span", { class: `state breaker ${breaker}` }, breaker),
        d.worker ? el("span", { class: "muted" }, ` · ${d.worker}`) : null),
      el("dl", {},
        el("dt", {}, "Waiting"), el("dd", { class: "depth" }, String(d.pending + d.inflight)),
        el("dt", {}, "Oldest"), el("dd", { class: "oldest" },
          d.oldest_pending_at ? ageNode(d.oldest_pending_at) : "–"),
        el("dt", {}, "Dead"), el("dd", { class: "dead" }, String(d.dead)),
        el("dt", {}, "Last error"), el("dd", { class: "last-error" }, d.last_error || "none")));
  }));
}

function renderShopify(shopify) {
  const card = $("shopify-card");
  card.hidden = !shopify;
  if (!shopify) return;
  const inbox = shopify.inbox;
  const poll = shopify.poll;
  const cat = shopify.catalogue;
  fill("shopify", el("dl", { class: "inbox" },
    el("dt", {}, "Inbox"), el("dd", { id: "inbox-counts" },
      `${inbox.pending} waiting · ${inbox.done} done · ${inbox.duplicate} duplicate · `
      + `${inbox.ignored} ignored · ${inbox.failed} failed`),
    el("dt", {}, "Came by"), el("dd", {}, `webhook ${inbox.by_via.webhook} · poll `
      + `${inbox.by_via.poll} · daemon ${inbox.by_via.daemon}`),
    el("dt", {}, "Last webhook"), el("dd", {}, inbox.last_webhook_at
      ? [ageNode(inbox.last_webhook_at), " ago"] : "none yet (polling only)"),
    el("dt", {}, "Last poll"), el("dd", {}, poll.last_poll_at
      ? [ageNode(poll.last_poll_at), ` ago, every ${poll.interval_seconds} s`] : "not yet",
      poll.last_error ? el("div", { class: "error" }, poll.last_error) : null),
    el("dt", {}, "Catalogue"), el("dd", {}, cat ? `${cat.status.toLowerCase()}`
      + (cat.items !== null ? `, ${cat.items} variants` : "")
      + (cat.applied_at ? ` (${time(cat.applied_at)})` : "") : "no full pull yet",
      cat && (cat.error || cat.last_error)
        ? el("div", { class: "error" }, cat.error || cat.last_error) : null)));
}

function renderPickups(pickups) {
  $("pickup-count").textContent = pickups.length ? String(pickups.length) : "";
  if (!pickups.length) { fill("pickups", empty("No online order to pick up here.")); return; }
  fill("pickups", pickups.map((p) => el("div", { class: "item", id: `pickup-${p.id}` },
    el("div", { class: "what" }, `${p.order_name || p.fulfillment_order_id} · `
      + `${p.customer_name || "a customer"} `,
      el("span", { class: `state pickup-${p.status}` }, p.status.replace("_", " "))),
    el("ul", { class: "lines" }, p.lines.map((ln) => el("li", {},
      `${ln.quantity} × ${ln.title}` + (ln.sku ? ` (${ln.sku})` : "")))),
    el("div", { class: "muted" }, `ordered ${time(p.ordered_at || p.created_at)}`
      + (p.sync.ready ? ` · ready ${p.sync.ready}` : "")))));
}

function capBar(part, whole) {
  const ratio = whole ? Math.min(1, part / whole) : 0;
  const kind = ratio >= 0.8 ? "bad" : ratio >= 0.5 ? "warn" : "";
  const fillNode = el("span", {});
  fillNode.style.width = `${(ratio * 100).toFixed(1)}%`;  // CSSOM: allowed by the CSP
  return el("div", { class: `bar ${kind}` }, fillNode);
}

function renderOffline(offline) {
  const head = el("p", { class: "muted" }, offline.enabled
    ? `Token payments are accepted offline up to ${offline.max_payment} minor units each,`
      + ` ${offline.max_stored_total} stored per currency, forwarded within`
      + ` ${offline.max_age_hours} h.`
    : "Offline acceptance is off: token payments fail while a processor is unreachable.");
  if (!offline.stored.length) { fill("offline", head, empty("Nothing stored.")); return; }
  const maxAge = offline.max_age_hours * 3600;
  fill("offline", head, offline.stored.map((s) => el("div", { class: "item", id: `offline-${s.currency}` },
    el("div", {}, el("span", { class: "what stored-total" }, money(s.total, s.currency)),
      ` of ${money(s.cap, s.currency)} in ${s.count} payments`),
    capBar(s.total, s.cap),
    el("div", { class: "muted" }, "Oldest ", ageNode(s.oldest_at),
      ` old (forward within ${offline.max_age_hours} h)`),
    capBar(s.oldest_age_seconds, maxAge))));
}

function megabytes(bytes) { return `${(bytes / 1048576).toFixed(1)} MB`; }

function renderStorage(st) {
  if (!st) { fill("storage", empty("Not reported.")); return; }
  const rows = [
    el("dt", {}, "Database"), el("dd", { class: "db-size" }, megabytes(st.database_bytes)),
    el("dt", {}, "WAL"), el("dd", {}, `${megabytes(st.wal_bytes)} (largest ${megabytes(st.wal_peak_bytes)}, bound ${megabytes(st.wal_max_bytes)})`),
    el("dt", {}, "Free disk"), el("dd", { class: st.space_low ? "bad" : "" },
      megabytes(st.free_disk_bytes) + (st.space_low ? " — writes refused (ERR-1040)" : "")),
  ];
  const r = st.replica;
  if (r) {
    rows.push(el("dt", {}, "Replica"), el("dd", { class: "replica" },
      el("span", { class: `state ${r.state === "replicating" ? "closed" : "open"}` }, r.state),
      ` to ${r.url}`));
    rows.push(el("dt", {}, "Replicated"), el("dd", { class: "replica-lag" },
      r.replicated_at ? [ageNode(r.replicated_at), " ago"] : "not yet",
      r.last_error ? el("span", { class: "muted" }, ` · ${r.last_error}`) : null));
  } else {
    rows.push(el("dt", {}, "Replica"), el("dd", {}, "none configured ([replica] in the config)"));
  }
  if (st.backup) {
    rows.push(el("dt", {}, "Last backup"), el("dd", {},
      st.backup.last_at ? ageNode(st.backup.last_at) : "none yet",
      st.backup.last_error ? el("span", { class: "bad" }, ` · ${st.backup.last_error}`) : null));
  }
  fill("storage", el("div", { class: "dest" }, el("dl", {}, ...rows)));
}

function noteAndButtons(label, choices, act) {
  const note = el("input", { type: "text", placeholder: "Note: what the journal says",
                             "aria-label": `note for ${label}`, class: "note", "data-note": label,
                             oninput: () => { state.notes[label] = note.value; } });
  note.value = state.notes[label] || "";
  const buttons = choices.map(([text, value, cls]) => el("button", {
    type: "button", class: cls, "data-outcome": value,
    onclick: async (event) => {
      const text = note.value.trim();
      if (!text) { note.focus(); note.setAttribute("aria-invalid", "true"); return; }
      for (const b of buttons) b.disabled = true;
      try {
        await act(value, text);
        delete state.notes[label];
        $("action-error").textContent = "";
        refresh();
      } catch (e) {
        $("action-error").textContent = e.message;
        for (const b of buttons) b.disabled = false;
      }
    },
  }, text));
  return el("div", { class: "actions" }, note, buttons);
}

// When an unknown payment or refund was last read back from its processor (it settles
// itself when the processor shows how it ended); a terminal's own needs a person.
function checked(x) {
  if (x.last_checked_at) return `last checked with its processor ${time(x.last_checked_at)}`;
  const terminalOnly = "processor" in x ? x.processor === null : Boolean(x.terminal_id);
  return terminalOnly ? "no processor to ask: check the terminal's journal"
    : "not checked with its processor yet";
}

function renderUnknownPayments(payments) {
  $("unknown-count").textContent = payments.length ? String(payments.length) : "";
  if (!payments.length) { fill("unknown-payments", empty("None: every payment is settled.")); return; }
  fill("unknown-payments", payments.map((p) => el("div", { class: "item", id: `unknown-${p.id}` },
    el("div", { class: "what" }, `${money(p.amount, p.currency)} · ${p.method}`
      + (p.terminal_id ? ` on ${p.terminal_id}` : p.processor ? ` via ${p.processor}` : "")),
    el("div", { class: "muted" }, `${p.id} · ${time(p.created_at)}`
      + (p.reference ? ` · ref ${p.reference}` : "") + (p.failure ? ` · ${p.failure}` : "")),
    el("div", { class: "muted checked" }, checked(p)),
    state.actions ? noteAndButtons(p.id, [["Approved", "approved", "good"],
                                          ["Declined", "declined", "bad"]],
      (outcome, note) => api("POST", `/v1/payments/${encodeURIComponent(p.id)}/resolve`,
                             { outcome, note })) : null)));
}

function renderUnknownRefunds(refunds) {
  $("unknown-refund-count").textContent = refunds.length ? String(refunds.length) : "";
  if (!refunds.length) { fill("unknown-refunds", empty("None.")); return; }
  fill("unknown-refunds", refunds.map((r) => el("div", { class: "item", id: `unknown-${r.id}` },
    el("div", { class: "what" }, `${money(r.amount, r.currency)} back on ${r.payment_id}`),
    el("div", { class: "muted" }, `${r.id} · ${time(r.created_at)}`
      + (r.failure ? ` · ${r.failure}` : "")),
    el("div", { class: "muted checked" }, checked(r)),
    state.actions ? noteAndButtons(r.id, [["Refunded", "succeeded", "good"],
                                          ["Not refunded", "failed", "bad"]],
      (outcome, note) => api("POST", `/v1/refunds/${encodeURIComponent(r.id)}/resolve`,
                             { outcome, note })) : null)));
}

function renderDeadJobs(jobs) {
  $("dead-count").textContent = jobs.length ? String(jobs.length) : "";
  if (!jobs.length) { fill("dead-jobs", empty("None: nothing failed for good.")); return; }
  fill("dead-jobs", jobs.map((j) => {
    const act = (what) => async (event) => {
      event.target.disabled = true;
      try {
        await api("POST", `/v1/sync/jobs/${j.id}/${what}`, {});
        $("action-error").textContent = "";
        refresh();
      } catch (e) {
        $("action-error").textContent = e.message;
        event.target.disabled = false;
      }
    };
    return el("div", { class: "item", id: `job-${j.id}` },
      el("div", { class: "what" }, `${j.destination} · ${j.kind} · ${j.subject_id}`),
      el("div", { class: "muted" }, `${j.attempts} attempts · ${j.last_error || "no error"}`),
      j.retry_refused ? el("div", { class: "muted" }, `No retry: ${j.retry_refused}`) : null,
      state.actions ? el("div", { class: "actions" },
        j.retry_refused ? null
          : el("button", { type: "button", class: "good", onclick: act("retry") }, "Retry"),
        el("button", { type: "button", onclick: act("discard") }, "Discard")) : null);
  }));
}

function renderAlerts(alerts) {
  if (!alerts.length) { fill("alerts", empty("No alerts.")); return; }
  fill("alerts", alerts.map((a) => el("div", {
    class: `alert ${a.severity}${a.cleared_at ? " cleared" : ""}`, id: `alert-${a.id}` },
    el("span", { class: "when" }, `${a.severity} · raised ${time(a.raised_at)}`
      + (a.cleared_at ? ` · cleared ${time(a.cleared_at)}` : " · open")),
    a.message)));
}

function renderPayments(payments) {
  if (!payments.length) { fill("payments", empty("No payments yet.")); return; }
  fill("payments", el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "When"), el("th", {}, "Method"),
      el("th", { class: "num" }, "Amount"), el("th", {}, "State"))),
    el("tbody", {}, payments.map((p) => el("tr", { id: `pay-${p.id}` },
      el("td", {}, time(p.created_at)),
      el("td", {}, p.method + (p.terminal_id ? ` · ${p.terminal_id}` : "")),
      el("td", { class: "num amount" }, money(p.amount, p.currency)),
      el("td", {}, stateNode(p.state)))))));
}

// -- start --------------------------------------------------------------------------------

$("signin-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);

(async () => {
  const response = await fetch("/session", { credentials: "same-origin" });
  if (response.ok) start(await response.json());
  else showSignIn("");
})();
