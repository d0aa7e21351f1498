"""
The response side of the proxy's framing, without I/O: a response head is
read for its framing (and, in sticky mode or over TLS, the session cookie)
and relayed as it came whenever nothing in it is hop-by-hop.
"""

from __future__ import annotations

import re
from typing import Optional

from attrs import define

from .framing import (
    CHUNKED,
    CRLF,
    FIELD_VALUE,
    HOP_BY_HOP,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    _DIGITS,
    _HEADER,
)

# A whole response head (status line and header lines) in one match;
# unambiguous, as the request side's.
_STATUS_LINE = rb"HTTP/1\.([01]) ([0-9]{3})(?: " + FIELD_VALUE + rb")?"
_RESPONSE = re.compile(
    _STATUS_LINE + rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:" + FIELD_VALUE + rb")*\Z"
)
# A response head with exactly one Content-Length (its digits captured)
# and nothing hop-by-hop but, at most, the one line real servers add to
# plain answers (nginx, Apache), C{Connection: keep-alive} (its span
# captured, to be cut out), in one match; the other lines exclude those
# names, so every line can be read one way only and the match stays linear.
_OTHER_LINE = (
    rb"\r\n(?!(?i:c(?:ontent-length|onnection)|keep-alive|t(?:e|railer|ransfer-encoding)|upgrade"
    rb"|proxy-(?:connection|authenticate)):)[!#$%&'*+.^_`|~0-9A-Za-z-]+:" + FIELD_VALUE
)
_OTHERS = rb"(?:" + _OTHER_LINE + rb")*"
_LENGTH_LINE = rb"\r\n(?i:content-length):[ \t]*([0-9]{1,18})[ \t]*"
_KEEP_ALIVE_LINE = rb"(\r\n(?i:connection):[ \t]*(?i:keep-alive)[ \t]*)"
_PLAIN_RESPONSE = re.compile(
    _STATUS_LINE + _OTHERS
    + rb"(?:" + _LENGTH_LINE + _OTHERS + rb"(?:" + _KEEP_ALIVE_LINE + _OTHERS + rb")?"
    + rb"|" + _KEEP_ALIVE_LINE + _OTHERS + _LENGTH_LINE + _OTHERS + rb")\Z"
)
_RESPONSE_SPECIAL = re.compile(
    rb"\r\n(?:connection|keep-alive|te|trailer|transfer-encoding|upgrade|proxy-connection"
    rb"|proxy-authenticate):"
)


@define(slots=True)
class ResponseHead:
    """
    What the proxy needs to know about one response, and the head to relay.

    C{reusable} says whether the server connection may carry another
    request afterwards; C{session} is the value of the session cookie the
    server set, if any.  C{relay} is C{None} when the head is relayed
    exactly as it came (the common case, which then costs no copy).
    """

    status: int
    framing: int
    length: int
    reusable: bool
    session: Optional[bytes]
    relay: Optional[bytes]


def parse_response_head(
    head: bytes,
    method: bytes,
    cookie_name: Optional[bytes],
    secure: bool,
    client_keep_alive: bool,
) -> Optional[ResponseHead]:
    """
    Read one response head (without its final blank line) for its framing.

    Returns C{None} when the head is not HTTP/1.x the proxy can relay
    safely; the caller answers 502.  C{cookie_name}, when given, is the
    session cookie to report (sticky learning) and, when C{secure}, to mark
    C{Secure}.  The relayed head says C{Connection: close} when the client
    connection will close after it.
    """
    if cookie_name is None and client_keep_alive and method != b"HEAD":
        m = _PLAIN_RESPONSE.match(head)
        if m is not None:
            # The common case: one Content-Length, nothing hop-by-hop, so
            # the head is relayed as it came, or with its "Connection:
            # keep-alive" cut out (as the full reading below drops it, the
            # connection then reusable).
            minor, code, length_value, keep, keep_first, length_second = m.group(1, 2, 3, 4, 5, 6)
            status = int(code)
            if status >= 200 and status != 204 and status != 304:
                if keep is None and keep_first is None:
                    length = int(length_value)
                    return ResponseHead(status, LENGTH if length else NO_BODY, length, minor == b"1", None, None)
                if keep is None:
                    length = int(length_second)
                    start, end = m.span(5)
                else:
                    length = int(length_value)
                    start, end = m.span(4)
                relay = head[:start] + head[end:] + b"\r\n\r\n"
                return ResponseHead(status, LENGTH if length else NO_BODY, length, True, None, relay)
    m = _RESPONSE.match(head)
    if m is None:
        return None
    status = int(m.group(2))
    reusable = m.group(1) == b"1"
    length_value = te = None
    session = None
    # The status line cannot hold CRLF: every "\r\nname:" is a header line.
    lower = head.lower()
    if cookie_name is None and _RESPONSE_SPECIAL.search(lower) is None:
        # The common case: relay the head as it came; only the length matters.
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            i += 17
            j = lower.find(b"\r\n", i)
            if j < 0:
                length_value = head[i:].strip(b" \t")
            elif lower.find(b"\r\ncontent-length:", j) >= 0:
                return None
            else:
                length_value = head[i:j].strip(b" \t")
            if (
                client_keep_alive
                and status >= 200
                and status != 204
                and status != 304
                and method != b"HEAD"
                and _DIGITS.match(length_value) is not None
            ):
                length = int(length_value)
                return ResponseHead(status, LENGTH if length else NO_BODY, length, reusable, None, None)
        return _finish_response(status, reusable, method, te, length_value, session, [head], client_keep_alive, True)
    lines = head.split(CRLF)
    out = [lines[0]]
    append = out.append
    match = _HEADER.match
    for line in lines[1:]:
        h = match(line)
        if h is None:
            return None
        name = h.group(1).lower()
        if name in HOP_BY_HOP:
            if name == b"transfer-encoding":
                te = h.group(2).strip(b" \t")
            elif name == b"connection":
                tokens = h.group(2).lower()
                if b"close" in tokens:
                    reusable = False
                elif b"keep-alive" in tokens:
                    reusable = True
            continue
        if name == b"content-length":
            value = h.group(2).strip(b" \t")
            if length_value is not None and length_value != value:
                return None
            length_value = value
        elif name == b"set-cookie" and cookie_name is not None:
            value = h.group(2).strip(b" \t")
            if value.startswith(cookie_name) and value[len(cookie_name) : len(cookie_name) + 1] == b"=":
                end = value.find(b";")
                session = value[len(cookie_name) + 1 : (None if end < 0 else end)].strip()
                if secure and b"secure" not in value.lower():
                    line = line.rstrip() + b"; Secure"
        append(line)
    return _finish_response(status, reusable, method, te, length_value, session, out, client_keep_alive)


def _finish_response(status, reusable, method, te, length_value, session, out, client_keep_alive, unchanged=False):
    append = out.append
    if method == b"HEAD" or status < 200 or status in (204, 304):
        framing, length = NO_BODY, 0
    elif te is not None:
        # Both framings can be read two ways by whoever is behind us
        # (RFC 9112 6.3): refused, as on the request side.
        if length_value is not None or te.strip().lower() != b"chunked":
            return None
        framing, length = CHUNKED, 0
        append(b"Transfer-Encoding: chunked")
    elif length_value is not None:
        if _DIGITS.match(length_value) is None:
            return None
        length = int(length_value)
        framing = LENGTH if length else NO_BODY
    else:
        framing, length = UNTIL_CLOSE, 0
        reusable = False
    if not client_keep_alive or framing == UNTIL_CLOSE:
        append(b"Connection: close")
    elif unchanged:
        return ResponseHead(status, framing, length, reusable, session, None)
    append(b"\r\n")
    return ResponseHead(
        status=status,
        framing=framing,
        length=length,
        reusable=reusable,
        session=session,
        relay=CRLF.join(out),
    )
