"""
The session cookie: C{<sid>!<primary>!<secondary>}.

A cookie is a routing hint from an untrusted client.  Parsing never raises:
a malformed value, a malformed sid or a node name the cluster does not know
simply reads as absent, so a bad cookie behaves like no cookie.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Container, Optional, Tuple

from attrs import frozen

SEPARATOR = "!"
_SID = re.compile(r"^[A-Za-z0-9_-]{22}$")
MAX_VALUE = 200


def new_sid() -> str:
    """
    128 random bits from L{secrets}, URL-safe, 22 characters.
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def valid_sid(sid: object) -> bool:
    return isinstance(sid, str) and _SID.match(sid) is not None


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
        sid if _SID.match(sid) else None,
        primary if primary in nodes else None,
        secondary if secondary in nodes and secondary != primary else None,
    )


def find(header: bytes, name: bytes) -> Optional[bytes]:
    """
    The value of cookie C{name} in one C{Cookie} request header, without
    building a dictionary of every cookie; the first one wins.
    """
    start = 0
    target = name + b"="
    while True:
        i = header.find(target, start)
        if i < 0:
            return None
        if i == 0 or header[i - 1 : i] in (b" ", b";", b"\t"):
            j = header.find(b";", i)
            return header[i + len(target) : (None if j < 0 else j)].strip()
        start = i + 1


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
