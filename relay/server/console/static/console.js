// The Synq console: renders the relay's snapshot (/console/api/events, server-sent events)
// and calls the queue actions. No framework and no build step: the page is small enough that
// a few DOM helpers and an SVG polyline per chart say it all.
"use strict";

const $ = (selector) => document.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";

let csrf = null;
let selected = null; // the message whose hops are shown: {id, origin}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function badge(text) {
  return el("span", { class: `badge ${text || ""}` }, text || "—");
}

function when(ts) {
  if (!ts) return "—";
  const date = new Date(ts);
  // The time alone for today, the date too for anything else (an expiry days away).
  const today = date.toDateString() === new Date().toDateString();
  return el("time", { dateTime: ts, title: ts }, today ? date.toLocaleTimeString() : date.toLocaleString());
}

function fill(tbody, rows, columns) {
  tbody.replaceChildren(
    ...(rows.length
      ? rows
      : [el("tr", {}, el("td", { class: "empty", colSpan: columns }, "nothing"))]),
  );
}

function notice(text, error) {
  const node = $("#notice");
  node.textContent = text;
  node.className = error ? "error" : "";
}

async function action(path, fields, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return;
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(fields || {}),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    notice(body.error ? body.error.message : `failed: ${response.status}`, true);
    return;
  }
  const [what, count] = Object.entries(body)[0] || ["done", ""];
  notice(`${what}: ${count}`);
}

// --- panels ----------------------------------------------------------------------------------

function renderDestinations(snap) {
  $("#queued-count").textContent = `(${snap.queued} queued)`;
  fill(
    $("#destinations tbody"),
    snap.destinations.map((d) =>
      el(
        "tr",
        { "data-domain": d.domain },
        el("td", {}, d.domain),
        el("td", { class: "num depth" }, d.depth),
        el("td", {}, when(d.oldest)),
        el("td", {}, when(d.next_attempt)),
        el("td", {}, badge(d.breaker), d.probe_at ? el("span", {}, " probe ", when(d.probe_at)) : null),
        el("td", {}, d.code ? `${d.code} ${d.reason || ""}` : "—"),
        el(
          "td",
          {},
          el("button", { type: "button", class: "flush", onclick: () => action("/console/api/queue/flush", { domain: d.domain }) }, "Flush"),
          " ",
          el("button", {
            type: "button",
            class: "danger delete",
            onclick: () => action("/console/api/queue/delete", { domain: d.domain }, `Delete everything queued for ${d.domain}? No DSN is sent.`),
          }, "Delete"),
        ),
      ),
    ),
    7,
  );
}

function renderQueue(snap) {
  fill(
    $("#queue tbody"),
    snap.queue.map((q) =>
      el(
        "tr",
        { "data-id": q.id, "data-recipient": q.recipient },
        el("td", { class: "mono" }, el("a", { href: "#", onclick: (e) => { e.preventDefault(); show(q.id, null); } }, q.id)),
        el("td", {}, `${q.from} → ${q.recipient}`),
        el("td", { class: "num" }, q.attempts),
        el("td", {}, when(q.next_attempt)),
        el("td", {}, when(q.expires)),
        el("td", {}, q.code ? `${q.code} ${q.reason || ""}` : "—"),
        el(
          "td",
          {},
          el("button", { type: "button", class: "retry", onclick: () => action("/console/api/queue/retry", { id: q.id }) }, "Retry"),
          " ",
          el("button", {
            type: "button",
            class: "danger delete",
            onclick: () => action("/console/api/queue/delete", { id: q.id }, `Delete message ${q.id} from the queue? No DSN is sent.`),
          }, "Delete"),
        ),
      ),
    ),
    7,
  );
}

function renderPartners(snap) {
  fill(
    $("#partners tbody"),
    snap.partners.map((p) =>
      el(
        "tr",
        { "data-domain": p.domain },
        el("td", {}, p.domain),
        el("td", {}, badge(p.breaker)),
        el("td", { class: "num" }, p.queued),
        el("td", {}, p.failures.length ? p.failures.join("; ") : "—"),
        el("td", {}, when(p.last_success)),
        el("td", {}, when(p.last_received)),
        el("td", { class: "mono" }, p.keys.length ? p.keys.join(", ") : "—"),
      ),
    ),
    7,
  );
}

function renderAgents(snap) {
  fill(
    $("#agents tbody"),
    snap.agents.map((a) =>
      el(
        "tr",
        { "data-agent": a.name },
        el("td", {}, a.address, a.visibility ? el("span", { class: "badge" }, a.visibility) : null),
        el("td", {}, a.kind),
        el("td", { class: "num" }, a.unacked),
        el("td", {}, when(a.oldest_unacked)),
        el("td", {}, a.health ? badge(a.health) : "—"),
      ),
    ),
    5,
  );
}

function messageRows(messages) {
  return messages.map((m) =>
    el(
      "tr",
      { "data-id": m.id },
      el("td", { class: "mono" }, el("a", { href: "#", onclick: (e) => { e.preventDefault(); show(m.id, m.origin); } }, m.id)),
      el("td", {}, m.from || "—"),
      el("td", {}, ...(m.to || []).flatMap((to, i) => [i ? ", " : "", to, " ", badge((m.states || {})[to])])),
      el("td", {}, m.thread || "—"),
      el("td", {}, m.kind || "—"),
      el("td", {}, when(m.received)),
    ),
  );
}

function renderBounces(snap) {
  fill(
    $("#bounces tbody"),
    snap.bounces.map((b) =>
      el(
        "tr",
        { "data-id": b.id },
        el("td", {}, when(b.at)),
        el("td", { class: "mono" }, el("a", { href: "#", onclick: (e) => { e.preventDefault(); show(b.id, b.origin); } }, b.id)),
        el("td", {}, b.from),
        el("td", {}, b.recipient),
        el("td", {}, b.code || "—"),
        el("td", {}, b.reason || "—"),
      ),
    ),
    6,
  );
}

function renderSignals(snap) {
  fill(
    $("#signals tbody"),
    (snap.signals || []).map((s) =>
      el(
        "tr",
        { "data-id": s.id },
        el("td", { class: "mono", title: s.text }, s.id),
        el("td", {}, s.topic),
        el("td", {}, s.emitter),
        el("td", {}, badge(s.state)),
        el("td", {}, s.intensity.toFixed(3)),
        el("td", {}, s.claim ? s.claim.holder : "—"),
        el("td", {}, s.claim ? when(s.claim.expires) : "—"),
        el("td", {}, when(s.expires)),
      ),
    ),
    8,
  );
}

// --- charts: one polyline per series, scaled to the largest value shown ------------------------

function chart(svg, points, series) {
  const width = 300;
  const height = 100;
  let top = 1;
  for (const p of points) for (const s of series) top = Math.max(top, p[s]);
  const children = [];
  if (points.length > 1) {
    const step = width / (points.length - 1);
    for (const s of series) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", `s-${s}`);
      line.setAttribute(
        "points",
        points.map((p, i) => `${(i * step).toFixed(1)},${(height - (p[s] / top) * (height - 12)).toFixed(1)}`).join(" "),
      );
      children.push(line);
    }
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "9");
  label.textContent = points.length > 1 ? `max ${top}` : "collecting samples…";
  children.push(label);
  svg.replaceChildren(...children);
}

function renderCharts(snap) {
  chart($("#chart-throughput"), snap.chart, ["accepted", "sent"]);
  chart($("#chart-deferrals"), snap.chart, ["deferred", "bounced"]);
  chart($("#chart-depth"), snap.chart, ["depth"]);
}

// --- messages --------------------------------------------------------------------------------

async function search(q) {
  const response = await fetch(`/console/api/messages?q=${encodeURIComponent(q)}`, { credentials: "same-origin" });
  if (!response.ok) return;
  const body = await response.json();
  fill($("#messages tbody"), messageRows(body.messages), 6);
  if (q && body.messages.length && (!selected || selected.id !== body.messages[0].id)) {
    const exact = body.messages.find((m) => m.id === q);
    if (exact) show(exact.id, exact.origin);
  }
}

async function show(id, origin) {
  selected = { id, origin };
  const params = new URLSearchParams({ id });
  if (origin) params.set("origin", origin);
  const response = await fetch(`/console/api/message?${params}`, { credentials: "same-origin" });
  const detail = $("#message-detail");
  if (!response.ok) {
    detail.hidden = true;
    return;
  }
  const status = await response.json();
  $("#detail-id").textContent = status.id;
  fill(
    $("#detail-recipients tbody"),
    Object.entries(status.recipients).map(([address, r]) =>
      el(
        "tr",
        { "data-recipient": address },
        el("td", {}, address),
        el("td", { class: "state" }, badge(r.state)),
        el("td", { class: "num" }, r.attempts),
        el("td", {}, r.code || "—"),
        el("td", {}, r.reason || "—"),
      ),
    ),
    5,
  );
  fill(
    $("#detail-hops tbody"),
    (status.events || []).map((e) =>
      el(
        "tr",
        { "data-event": e.event },
        el("td", {}, when(e.at)),
        el("td", {}, e.recipient),
        el("td", {}, e.event),
        el("td", {}, e.code || "—"),
        el("td", {}, e.reason || "—"),
        el("td", { class: "mono" }, e.hop || "—"),
      ),
    ),
    6,
  );
  detail.hidden = false;
}

// --- the stream ------------------------------------------------------------------------------

function render(snap) {
  if (snap.error) {
    notice(snap.error, true);
    return;
  }
  $("#domain").textContent = snap.relay.domain;
  $("#now").textContent = snap.now;
  renderSignals(snap);
  renderCharts(snap);
  renderDestinations(snap);
  renderQueue(snap);
  renderPartners(snap);
  renderAgents(snap);
  renderBounces(snap);
  const q = $("#q").value.trim();
  if (q) search(q);
  else fill($("#messages tbody"), messageRows(snap.recent), 6);
  if (selected) show(selected.id, selected.origin);
}

async function start() {
  const response = await fetch("/console/api/session", { credentials: "same-origin" });
  if (response.status === 401) {
    window.location.href = "/console/login";
    return;
  }
  const session = await response.json();
  csrf = session.csrf;
  document.querySelector("#logout input[name=csrf_token]").value = csrf;
  $("#flush-all").addEventListener("click", () => action("/console/api/queue/flush", {}));
  $("#search").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("#q").value.trim());
  });
  const stream = new EventSource("/console/api/events");
  stream.addEventListener("open", () => {
    $("#live").textContent = "live";
    $("#live").className = "on";
  });
  stream.addEventListener("error", () => {
    $("#live").textContent = "reconnecting";
    $("#live").className = "";
  });
  stream.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  stream.addEventListener("ended", () => {
    stream.close();
    window.location.href = "/console/login";
  });
}

start();
