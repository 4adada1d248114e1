// The printable end-of-day report: GET /v1/reports/day with the session cookie.
"use strict";

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function money(amount, currency) {
  let digits = 2;
  try {
    digits = new Intl.NumberFormat("en", { style: "currency", currency })
      .resolvedOptions().maximumFractionDigits;
  } catch (e) { /* unknown to the browser: two digits */ }
  const sign = amount < 0 ? "-" : "";
  const abs = Math.abs(amount);
  const frac = digits ? "." + String(abs % 10 ** digits).padStart(digits, "0") : "";
  return `${sign}${Math.floor(abs / 10 ** digits).toLocaleString("en")}${frac} ${currency}`;
}

function rows(header, data) {
  return el("table", {}, el("thead", {}, el("tr", {}, header.map((h, i) =>
    el("th", i ? { class: "num" } : {}, h)))),
  el("tbody", {}, data.map((r) => el("tr", {}, r.map((c, i) =>
    el("td", i ? { class: "num" } : {}, c))))));
}

async function load(date) {
  $("error").textContent = "";
  const query = date ? `?date=${encodeURIComponent(date)}` : "";
  const response = await fetch(`/v1/reports/day${query}`, { credentials: "same-origin" });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    $("error").textContent = data && data.error ? data.error.message
      : `HTTP ${response.status}`;
    if (response.status === 401) $("error").append(" ", el("a", { href: "/" }, "Sign in"));
    return;
  }
  $("date").value = data.date;
  $("title").textContent = `Day ${data.date}`;
  $("meta").textContent = `${data.timezone}, from ${data.from} to ${data.to} (UTC);`
    + ` printed ${new Date(data.generated_at).toLocaleString()}`;
  $("currencies").replaceChildren(...data.currencies.map((c) => el("section",
    { class: "card", id: `report-${c.currency}` },
    el("h3", {}, c.currency),
    rows(["", "count", "amount"], [
      ["Takings (approved)", c.takings.count, money(c.takings.total, c.currency)],
      ["Refunds", c.refunds.count, money(c.refunds.total, c.currency)],
      ["Net", "", money(c.net, c.currency)],
      ["Unknown (to resolve)", c.unknown.count, money(c.unknown.total, c.currency)],
      ["Stored offline, not forwarded", c.stored.count, money(c.stored.total, c.currency)],
    ]),
    el("h4", {}, "By method"),
    rows(["method", "count", "amount"], c.by_method.map((m) =>
      [m.method, m.count, money(m.total, c.currency)])),
    el("h4", {}, "By lane"),
    rows(["lane", "count", "amount"], c.by_lane.map((m) =>
      [m.lane, m.count, money(m.total, c.currency)])),
    el("h4", {}, "Payments by state"),
    rows(["state", "count"], Object.entries(c.counts)))));
  const lists = [];
  if (data.unknown_payments.length) {
    lists.push(el("h3", {}, "Payments still unknown"), rows(["payment", "amount"],
      data.unknown_payments.map((p) => [p.id, money(p.amount, p.currency)])));
  }
  if (data.unknown_refunds.length) {
    lists.push(el("h3", {}, "Refunds still unknown"), rows(["refund", "amount"],
      data.unknown_refunds.map((r) => [r.id, money(r.amount, r.currency)])));
  }
  if (data.stored_payments.length) {
    lists.push(el("h3", {}, "Stored, not yet forwarded"), rows(["payment", "amount"],
      data.stored_payments.map((p) => [p.id, money(p.amount, p.currency)])));
  }
  lists.push(el("h3", {}, "Changes not yet synced"), data.unsynced.length
    ? rows(["destination", "waiting", "dead"], data.unsynced.map((u) =>
      [u.destination, u.pending + u.inflight, u.dead]))
    : el("p", { class: "muted" }, "None: everything reached the cloud."));
  if (data.audit && data.audit.head) {
    // kept on paper, it lets `edged audit verify --expect-head` prove no entry was cut later
    lists.push(el("h3", {}, "Audit chain"), el("p", { id: "audit-head" },
      `${data.audit.entries} entries; head ${data.audit.head}`));
  }
  $("lists").replaceChildren(el("section", { class: "card" }, lists));
}

async function downloadCsv() {
  const date = $("date").value;
  const response = await fetch(`/v1/reports/day?date=${encodeURIComponent(date)}`,
    { credentials: "same-origin", headers: { Accept: "text/csv" } });
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    $("error").textContent = data && data.error ? data.error.message : `HTTP ${response.status}`;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: `edged-${date}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  URL.revokeObjectURL(url);
}

$("pick").addEventListener("submit", (event) => { event.preventDefault(); load($("date").value); });
$("print").addEventListener("click", () => window.print());
$("csv").addEventListener("click", downloadCsv);
load(new URLSearchParams(location.search).get("date") || "");
