"""
The status page (C{/} and C{/status}): one self-contained HTML document,
its CSS and script inline (no CDN, nothing fetched but the admin JSON),
that asks C{/cluster.json} every 1.5 seconds and redraws without reloading.
Each row carries C{data-section} and C{data-state}, which the browser test
reads.
"""

from __future__ import annotations

from twisted.web import resource

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>appliance status</title>
<style>
  :root { --fg: #1d2430; --muted: #6b7483; --line: #dde2ea; --up: #1f8a4c; --down: #c62828;
          --warn: #b26a00; --bg: #f6f8fb; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
         background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 1em; padding: 12px 20px; background: #fff;
           border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; }
  header .muted { margin-left: auto; }
  main { padding: 8px 20px 40px; }
  h2 { font-size: 15px; margin: 22px 0 8px; }
  table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); min-width: 60%; }
  th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
  th { font-weight: 600; background: #eef1f6; font-size: 12px; color: #3b4452; }
  th:first-child, td:first-child, td.text { text-align: left; }
  .muted { color: var(--muted); }
  .state { font-weight: 600; text-transform: uppercase; font-size: 12px; padding: 1px 6px; border-radius: 3px;
           color: #fff; }
  .state-up { background: var(--up); } .state-down { background: var(--down); }
  .state-draining, .state-isolated, .state-silent { background: var(--warn); }
  .state-unknown, .state-supervisor { background: var(--muted); }
  tr.down td { color: var(--down); }
  .chip { display: inline-block; margin-right: 4px; padding: 0 5px; border-radius: 3px; background: #eef1f6; }
  .chip.bad { background: #fde4e4; color: var(--down); }
  #error { color: var(--down); }
  form { display: inline; }
  input { font: inherit; padding: 3px 6px; }
  button { font: inherit; padding: 3px 10px; }
  pre { background: #fff; border: 1px solid var(--line); padding: 8px; max-width: 60em; overflow: auto; }
</style>
</head>
<body>
<header>
  <h1>appliance <span id="cluster" class="muted"></span></h1>
  <span id="error"></span>
  <span class="muted">asked by <span id="asked"></span>, updated <span id="updated">never</span></span>
</header>
<main>
  <h2>Session servers</h2>
  <table id="nodes"><thead><tr>
    <th>node</th><th>state</th><th>sessions</th><th>primaries</th><th>backups</th><th>without secondary</th>
    <th>unreplicated</th><th>round trip</th><th title="in the last hour">failovers</th><th title="in the last hour">takeovers</th>
    <th title="in the last hour">fencings</th><th title="in the last hour">resyncs</th></tr></thead><tbody></tbody></table>
  <h2>Balancers</h2>
  <table id="balancers"><thead><tr>
    <th>balancer</th><th>state</th><th>requests/s</th><th>5xx rate</th><th class="text">by status (/s)</th>
    <th class="text">servers</th><th>sticky entries</th></tr></thead><tbody></tbody></table>
  <h2>DNS</h2>
  <table id="dns"><thead><tr><th>responder</th><th>state</th><th>queries/s</th><th class="text">answer</th></tr></thead>
    <tbody></tbody></table>
  <h2>Sessions of a node</h2>
  <p><select id="node"></select> <span id="count" class="muted"></span></p>
  <table id="largest"><thead><tr><th>largest sessions</th><th>bytes</th><th>version</th></tr></thead><tbody></tbody></table>
  <p><form id="lookup"><input id="sid" size="30" placeholder="session id"> <button>look up</button></form>
     <button id="end" disabled>end this session</button></p>
  <pre id="session" class="muted">no session looked up</pre>
</main>
<script>
"use strict";
const DASH = "-";
function text(v) { return v === null || v === undefined ? DASH : String(v); }
function ms(v) { return v === null || v === undefined ? DASH : (v * 1000).toFixed(1) + " ms"; }
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(text(k)));
  return e;
}
function state(s) { return el("span", {class: "state state-" + s}, s); }
function row(section, s, cells) {
  return el("tr", {"data-section": section.section, "data-state": s, class: s === "down" ? "down" : ""},
            ...cells.map(c => c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c)));
}
function fill(id, rows) { document.querySelector("#" + id + " tbody").replaceChildren(...rows); }
function roundTrip(s) {
  const v = Object.values(s.round_trip || {});
  return v.length ? ms(Math.max(...v)) : DASH;
}
function servers(map) {
  return el("td", {class: "text"}, ...Object.entries(map || {}).map(
    ([name, st]) => el("span", {class: "chip" + (st === "up" ? "" : " bad")}, name + " " + st)));
}
function byStatus(map) {
  if (!map) return el("td", {class: "text"}, DASH);
  return el("td", {class: "text"}, ...Object.entries(map).map(([code, r]) => el("span", {class: "chip" + (code[0] >= "4" ? " bad" : "")}, code + ": " + r)));
}
function draw(view) {
  document.getElementById("cluster").textContent = view.cluster;
  document.getElementById("asked").textContent = view.asked_by;
  const nodes = [], balancers = [], dns = [], picks = [];
  for (const s of view.sections) {
    const st = s.state || (s.kind === "supervisor" ? "up" : "up");
    const down = st === "down" || st === "unknown";
    if (s.kind === "node") {
      picks.push(s.name);
      const h = s.last_hour || {};
      nodes.push(row(s, st, down ? [s.name, state(st), el("td", {colspan: 10, class: "text"}, s.error)] :
        [s.name, state(st), s.sessions, s.primaries, s.backups, s.unprotected, s.unreplicated, roundTrip(s),
         h.failovers, h.takeovers, h.fencings, h.resyncs]));
    } else if (s.kind === "balancer") {
      balancers.push(row(s, st, down ? [s.name, state(st), el("td", {colspan: 5, class: "text"}, s.error)] :
        [s.name, state(st), s.requests_per_second,
         s.error_rate === null ? DASH : (s.error_rate * 100).toFixed(1) + " %", byStatus(s.by_status),
         servers(s.servers), s.sticky_entries]));
    } else if (s.kind === "dns") {
      dns.push(row(s, st, down ? [s.section, state(st), el("td", {colspan: 2, class: "text"}, s.error)] :
        [s.name, state(st), s.queries_per_second, el("td", {class: "text"}, (s.answer || []).join(", ") || DASH)]));
    }
  }
  fill("nodes", nodes); fill("balancers", balancers); fill("dns", dns);
  const select = document.getElementById("node");
  if (select.options.length !== picks.length) {
    select.replaceChildren(...picks.map(n => el("option", {value: n}, n)));
  }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
async function json(url, options) {
  const r = await fetch(url, Object.assign({cache: "no-store", credentials: "same-origin"}, options || {}));
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}
async function refresh() {
  try {
    draw(await json("cluster.json"));
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach this admin listener: " + e.message;
  }
  try { await sessions(); } catch (e) { document.getElementById("count").textContent = e.message; }
}
let shown = null;
async function sessions() {
  const node = document.getElementById("node").value;
  if (!node) return;
  const s = await json("sessions.json?node=" + encodeURIComponent(node));
  document.getElementById("count").textContent = s.count + " sessions" +
    (s.largest_age === null ? "" : ", largest as of " + s.largest_age.toFixed(0) + " s ago");
  fill("largest", (s.largest || []).map(x => el("tr", {}, el("td", {class: "text"}, el("a", {href: "#", "data-sid": x.sid}, x.sid)),
                                                 el("td", {}, x.size), el("td", {}, x.version))));
}
async function lookUp(sid) {
  const node = document.getElementById("node").value;
  const out = document.getElementById("session");
  try {
    const s = await json("session.json?node=" + encodeURIComponent(node) + "&sid=" + encodeURIComponent(sid));
    out.textContent = JSON.stringify(s, null, 2); out.className = ""; shown = {node, sid};
    document.getElementById("end").disabled = false;
  } catch (e) { out.textContent = e.message; out.className = "muted"; shown = null; document.getElementById("end").disabled = true; }
}
document.getElementById("lookup").addEventListener("submit", e => { e.preventDefault(); lookUp(document.getElementById("sid").value.trim()); });
document.getElementById("largest").addEventListener("click", e => {
  const sid = e.target.getAttribute("data-sid");
  if (sid) { e.preventDefault(); document.getElementById("sid").value = sid; lookUp(sid); }
});
document.getElementById("end").addEventListener("click", async () => {
  if (!shown || !confirm("End session " + shown.sid + " on both copies?")) return;
  try {
    await json("end-session", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(shown)});
    document.getElementById("session").textContent = "ended " + shown.sid;
  } catch (e) { document.getElementById("session").textContent = e.message; }
  shown = null; document.getElementById("end").disabled = true;
});
refresh();
setInterval(refresh, 1500);
</script>
</body>
</html>
"""


class StatusPage(resource.Resource):
    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", b"default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
        request.setHeader(b"x-frame-options", b"DENY")
        return PAGE.encode("utf-8")
