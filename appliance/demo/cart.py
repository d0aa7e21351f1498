"""
The demo shopping cart: a plain WSGI application whose only state is its
session, C{environ["appliance.session"]}.

    GET    /cart               200 {"items": [...]}
    GET    /cart/route         200 {"node": the server that answered,
                               "primary": ..., "secondary": ...} as the
                               request's session cookie names them (null
                               without a session); the demo page's view
    POST   /cart/items         form field item; 200 the new list
    DELETE /cart/items/<item>  200 the new list (404 if not in the cart)
    POST   /cart/logout        200; the session ends everywhere

Another method on one of these paths is 405 with C{Allow}; another path
is 404 (both with a short text body).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote

from appliance import cookie

MAX_ITEM = 200


def _reply(start_response, status: str, body: object):
    data = json.dumps(body).encode("utf-8")
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")],
    )
    return [data]


def _refuse(start_response, status: str, allow: str = ""):
    data = status.encode("ascii") + b"\n"
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    if allow:
        headers.append(("Allow", allow))
    start_response(status, headers)
    return [data]


def _form(environ) -> dict:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(min(length, 65536)) if length > 0 else b""
    return parse_qs(body.decode("utf-8", "replace"))


def app(environ, start_response):
    session = environ["appliance.session"]
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "") or "/"
    if path == "/" and method in ("GET", "HEAD"):
        return _reply(start_response, "200 OK", {"items": session.get("cart", [])})
    if path == "/route" and method in ("GET", "HEAD"):
        return _reply(start_response, "200 OK", route(environ))
    if path == "/items" and method == "POST":
        item = (_form(environ).get("item") or [""])[0]
        if not item or len(item) > MAX_ITEM:
            return _reply(start_response, "400 Bad Request", {"error": f"form field item: 1-{MAX_ITEM} characters"})
        session.setdefault("cart", []).append(item)
        return _reply(start_response, "200 OK", session["cart"])
    if path.startswith("/items/") and method == "DELETE":
        item = unquote(path[len("/items/") :])
        cart = session.get("cart", [])
        if item not in cart:
            return _reply(start_response, "404 Not Found", {"error": "not in the cart", "items": cart})
        cart.remove(item)
        return _reply(start_response, "200 OK", cart)
    if path == "/logout" and method == "POST":
        session.invalidate()
        return _reply(start_response, "200 OK", {"logged_out": True})
    allow = _ALLOW.get(path, "DELETE" if path.startswith("/items/") else "")
    if allow:
        return _refuse(start_response, "405 Method Not Allowed", allow)
    return _refuse(start_response, "404 Not Found")


_ALLOW = {"/": "GET, HEAD", "/route": "GET, HEAD", "/items": "POST", "/logout": "POST"}


def route(environ) -> dict:
    """
    The serving node and the route of the request's session cookie, read
    by the rule the balancer and the servers apply (never the sid: the
    cookie is HttpOnly so that scripts do not see it).
    """
    cluster = environ["appliance.cluster"]
    header = environ.get("HTTP_COOKIE", "").encode("latin-1")
    _, where = cookie.session_cookie(header, cluster.cluster.cookie.encode("ascii"), frozenset(cluster.node_names))
    return {"node": environ["appliance.node"], "primary": where.primary, "secondary": where.secondary}


class Cart:
    """
    The same cart as a stateful session service for the persistent
    client (C{[service:cart] object = appliance.demo.cart:Cart}, with
    C{idempotent = items}): it works on the session's C{"cart"} list, so
    a cart filled over HTTP is the one a client sees, and back.
    """

    def __init__(self, session):
        self.session = session

    def add(self, item):
        """
        Put C{item} in the cart; returns how many items it holds.  Not
        idempotent: a retry must not add it twice.
        """
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ITEM:
            raise ValueError(f"an item is a string of 1-{MAX_ITEM} characters")
        cart = self.session.setdefault("cart", [])
        cart.append(item)
        return len(cart)

    def remove(self, item):
        """
        Take one C{item} out; returns whether it was there.
        """
        cart = self.session.get("cart", [])
        if item not in cart:
            return False
        cart.remove(item)
        self.session["cart"] = cart
        return True

    def items(self):
        """
        The items, in the order they were added.
        """
        return self.session.get("cart", [])
