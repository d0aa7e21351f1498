"""
The few answers the balancer gives itself, without I/O: its own health
check, 404 for the servers' internal endpoints, 429 to a client over its
new-session limit, and the redirect to HTTPS.  Each returns the bytes to
write and whether the client connection may stay open afterwards (not when
the request has a body, which is not read).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

from .framing import NO_BODY, RequestHead, simple_response

# The session servers' internal endpoints (health with pids and peers) live
# under this prefix, which no application may mount (see config.py).
INTERNAL = b"/_appliance"
LB_HEALTH = b"/_appliance/lb-health"


def is_lb_health(target: bytes) -> bool:
    """
    Whether C{target} asks for the balancer's own health.
    """
    return target.startswith(LB_HEALTH) and target[len(LB_HEALTH) : len(LB_HEALTH) + 1] in (b"", b"?")


def lb_health(head: RequestHead, keep_alive: bool) -> Tuple[bytes, bool]:
    """
    C{ok} to GET (and its length to HEAD); 405 to anything else.
    """
    keep = keep_alive and head.framing == NO_BODY
    body = b"ok\n"
    if head.method == b"HEAD":
        response = simple_response(200, "OK", b"", close=not keep).replace(
            b"Content-Length: 0", b"Content-Length: %d" % len(body)
        )
    elif head.method == b"GET":
        response = simple_response(200, "OK", body, close=not keep)
    else:
        response = simple_response(405, "Method Not Allowed", b"", (b"Allow: GET, HEAD",), close=not keep)
    return response, keep


def redirect_https(head: RequestHead, keep_alive: bool, port: Optional[int]) -> Tuple[bytes, bool]:
    """
    The same target on the HTTPS listener (C{port}): 301 for GET and HEAD,
    308 (which keeps the method and body) for the rest.
    """
    keep = keep_alive and head.framing == NO_BODY
    host = head.host or b"localhost"
    if host.startswith(b"["):
        host = host[: host.find(b"]") + 1]
    else:
        host = host.split(b":", 1)[0]
    authority = host if port == 443 else host + b":%d" % port
    target = head.target if head.target.startswith(b"/") else b"/"
    status = 301 if head.method in (b"GET", b"HEAD") else 308
    response = simple_response(
        status,
        "Moved Permanently" if status == 301 else "Permanent Redirect",
        b"",
        (b"Location: https://" + authority + target,),
        close=not keep,
    )
    return response, keep


def not_found(head: RequestHead, keep_alive: bool) -> Tuple[bytes, bool]:
    """
    404 for an internal endpoint of the session servers, which the public
    listeners do not forward.
    """
    keep = keep_alive and head.framing == NO_BODY
    return simple_response(404, "Not Found", b"Not Found\n", close=not keep), keep


def too_many_sessions(head: RequestHead, keep_alive: bool, wait: float) -> Tuple[bytes, bool]:
    """
    429 with the seconds to wait in C{Retry-After} (at least 1).
    """
    keep = keep_alive and head.framing == NO_BODY
    retry = b"Retry-After: %d" % max(1, math.ceil(wait))
    return simple_response(429, "Too Many Requests", b"Too Many Requests\n", (retry,), close=not keep), keep
