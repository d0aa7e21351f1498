"""
The session cookie: C{<sid>!<primary>!<secondary>}.

A cookie is a routing hint from an untrusted client.  Parsing never raises:
a malformed value, a malformed sid or a node name the cluster does not know
simply reads as absent, so a bad cookie behaves like no cookie.

A request may carry the session cookie more than once (a stale one set for
another path or domain, say).  L{session_cookie} is the one rule that the
balancer and the session servers both apply: the first value that reads as a
session (a well-formed sid and a primary or secondary the cluster knows) is
the request's session cookie, and the others are ignored.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Container, Optional, Tuple

from attrs import frozen

SEPARATOR = "!"
_SID = re.compile(r"[A-Za-z0-9_-]{22}")
MAX_VALUE = 200


def new_sid() -> str:
    """
    128 random bits from L{secrets}, URL-safe, 22 characters.
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def valid_sid(sid: object) -> bool:
    return isinstance(sid, str) and _SID.fullmatch(sid) is not None


@frozen
class Route:
    """
    What a cookie says: the session id and where it lives.  Any field is
    C{None} when it was missing, malformed or named an unknown node.
    """

    sid: Optional[str]
    primary: Optional[str]
    secondary: Optional[str]

    def candidates(self) -> Tuple[str, ...]:
        return tuple(n for n in (self.primary, self.secondary) if n is not None)


NO_ROUTE = Route(None, None, None)


def encode(sid: str, primary: str, secondary: Optional[str]) -> str:
    return SEPARATOR.join((sid, primary, secondary or ""))


def decode(value, nodes: Container[str]) -> Route:
    """
    Read a cookie value (str or bytes); never raises.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return NO_ROUTE
    if not isinstance(value, str) or len(value) > MAX_VALUE:
        return NO_ROUTE
    value = value.strip().strip('"')
    parts = value.split(SEPARATOR)
    if len(parts) != 3:
        return NO_ROUTE
    sid, primary, secondary = parts
    return Route(
        sid if _SID.fullmatch(sid) else None,
        primary if primary in nodes else None,
        secondary if secondary in nodes and secondary != primary else None,
    )


def session_cookie(header: Optional[bytes], name: bytes, nodes: Container[str]) -> Tuple[Optional[bytes], Route]:
    """
    The session cookie of a request whose C{Cookie} header lines, joined
    with C{"; "}, are C{header}: the value of the first cookie C{name} that
    reads as a session (a well-formed sid, and a primary or a secondary in
    C{nodes}), and its reading; C{(None, NO_ROUTE)} when none does.  Never
    raises.
    """
    if not header:
        return None, NO_ROUTE
    target = name + b"="
    start = 0
    while True:
        i = header.find(target, start)
        if i < 0:
            return None, NO_ROUTE
        start = i + 1
        if i == 0 or header[i - 1] in _COOKIE_SEPARATORS:
            j = header.find(b";", i)
            value = header[i + len(target) : (None if j < 0 else j)].strip()
            route = decode(value, nodes)
            if route.sid is not None and (route.primary is not None or route.secondary is not None):
                return value, route


_COOKIE_SEPARATORS = b" ;\t"


def set_cookie(name: str, value: str, secure: bool = False, max_age: Optional[int] = None) -> str:
    """
    A C{Set-Cookie} header value: always C{HttpOnly} and C{SameSite=Lax},
    C{Secure} when served over TLS.
    """
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
