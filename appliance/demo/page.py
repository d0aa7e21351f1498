"""
The page a newcomer sees at C{/}: the demo cart in a browser.

One self-contained HTML document (inline CSS and JavaScript, nothing
fetched from elsewhere) that works the cart's JSON endpoints
(L{appliance.demo.cart}) through whatever answered C{/} (a balancer):

    GET    /cart/route         which node served, and the primary and
                               secondary the request's cookie names
    GET    /cart               the items
    POST   /cart/items         add one (form field item)
    DELETE /cart/items/<item>  remove one
    POST   /cart/logout        end the session everywhere

The session cookie is C{HttpOnly}, so the page learns the route from
C{/cart/route}, asked after every change: by then the browser holds the
cookie the change's answer set.  A request that took the session over (its
primary was killed) answers from the new primary while its cookie still
named the old one; the page then asks once more and shows the new route.
It refreshes itself every two seconds, which is how the README's kill -9
tour shows the failover without a click.

Mounted with C{[app:demo] mount = /}; the link to the cluster's status
page is built from the configuration (L{status_url}).
"""

from __future__ import annotations

import html
from typing import Optional

from appliance.config import ClusterConfig

STATUS_PATH = "/_appliance/status"


def status_url(cluster: ClusterConfig, node: str) -> Optional[str]:
    """
    Where the cluster's status page is: the admin listener of the first
    balancer that has one (balancers outlive the session servers a tour
    kills), else the all-in-one supervisor's, else node C{node}'s own;
    C{None} when no process of the cluster has an admin listener.
    """
    own = cluster.node(node)
    candidates = [b.admin for b in cluster.balancers] + [cluster.cluster.admin, own.admin if own is not None else None]
    for address in candidates:
        if address is not None:
            return f"http://{address}{STATUS_PATH}"
    return None


def render(cluster: ClusterConfig, node: str) -> bytes:
    """
    The page as node C{node} of C{cluster} serves it.
    """
    url = status_url(cluster, node)
    if url is None:
        status = "<span>(no admin listener is configured)</span>"
    else:
        status = f'<a id="status" href="{html.escape(url)}">cluster status</a>'
    return (
        _PAGE.replace("{STATUS}", status)
        .replace("{CLUSTER}", html.escape(cluster.cluster.name))
        .encode("utf-8")
    )


def app(environ, start_response):
    """
    The WSGI application: the page at the mount's root, 404 elsewhere.
    Reads the configuration from C{environ["appliance.cluster"]} and
    the serving node from C{environ["appliance.node"]}.
    """
    path = environ.get("PATH_INFO", "") or "/"
    method = environ["REQUEST_METHOD"]
    if path != "/":
        return _text(start_response, "404 Not Found")
    if method not in ("GET", "HEAD"):
        return _text(start_response, "405 Method Not Allowed", [("Allow", "GET, HEAD")])
    body = render(environ["appliance.cluster"], environ["appliance.node"])
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
             "style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'"),
        ],
    )
    return [body] if method == "GET" else []


def _text(start_response, status: str, extra=()):
    data = status.encode("ascii") + b"\n"
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), *extra])
    return [data]


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>appliance demo cart</title>
<style>
body { font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: .2em .8em; text-align: left; border-bottom: 1px solid #ddd; }
.node { font-weight: bold; font-family: monospace; }
#error { color: #b00; min-height: 1.4em; }
ul { padding-left: 1.2em; }
li button { margin-left: .5em; }
</style>
</head>
<body>
<h1>Demo cart on {CLUSTER}</h1>
<p>Your cart lives in the memory of a <em>primary</em> session server and every
change is copied to a <em>secondary</em>.  Kill the primary's process
(<code>kill -9</code>) and keep using the cart: the secondary takes over.</p>
<table>
<tr><th>served by</th><td id="node" class="node">-</td></tr>
<tr><th>primary</th><td id="primary" class="node">-</td></tr>
<tr><th>secondary</th><td id="secondary" class="node">-</td></tr>
</table>
<form id="add">
<input id="item" name="item" maxlength="200" placeholder="an item" required>
<button type="submit">add</button>
<button type="button" id="logout">empty the cart (log out)</button>
<button type="button" id="refresh">refresh</button>
</form>
<p id="error"></p>
<p id="count">0 items</p>
<ul id="items"></ul>
<p>{STATUS}</p>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

async function call(method, path, body) {
  const options = { method: method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.body = new URLSearchParams(body).toString();
    options.headers["Content-Type"] = "application/x-www-form-urlencoded";
  }
  const response = await fetch(path, options);
  const text = await response.text();
  if (!response.ok) {
    throw new Error(method + " " + path + ": " + response.status + " " + text.trim());
  }
  return JSON.parse(text);
}

function show(items) {
  const list = $("items");
  list.textContent = "";
  for (const item of items) {
    const li = document.createElement("li");
    li.textContent = item;
    const remove = document.createElement("button");
    remove.textContent = "remove";
    remove.addEventListener("click", () => act(() => call("DELETE", "/cart/items/" + encodeURIComponent(item))));
    li.appendChild(remove);
    list.appendChild(li);
  }
  $("count").textContent = items.length + (items.length === 1 ? " item" : " items");
}

async function route() {
  let where = await call("GET", "/cart/route");
  if (where.primary && where.node !== where.primary) {
    // This request took the session over: the cookie it set names the new route.
    where = await call("GET", "/cart/route");
  }
  $("node").textContent = where.node;
  $("primary").textContent = where.primary || "(no session yet)";
  $("secondary").textContent = where.secondary || (where.primary ? "(none)" : "-");
}

async function refresh() {
  show((await call("GET", "/cart")).items);
  await route();
}

async function act(change) {
  try {
    await change();
    await refresh();
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = e.message;
  }
}

$("add").addEventListener("submit", (event) => {
  event.preventDefault();
  const item = $("item").value;
  $("item").value = "";
  act(() => call("POST", "/cart/items", { item: item }));
});
$("logout").addEventListener("click", () => act(() => call("POST", "/cart/logout")));
$("refresh").addEventListener("click", () => act(async () => {}));
setInterval(() => { if (!document.hidden) act(async () => {}); }, 2000);
act(async () => {});
</script>
</body>
</html>
"""
