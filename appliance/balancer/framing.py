"""
HTTP/1.x framing for the proxy, without I/O.

Only what a forwarding proxy needs: the request head is validated and
rewritten in one pass (hop-by-hop headers out, forwarding headers in) while
the few headers that matter (Host, Cookie, Content-Length,
Transfer-Encoding, Connection) are picked up on the way.  Nothing builds a
header dictionary, because the hot path must not pay for generality.  The
response side is L{appliance.balancer.response}; bodies are relayed as they
are (L{appliance.balancer.chunked} only finds where a chunked one ends).
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple, Union

from attrs import define, frozen

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"

IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])

# Body framing of a message.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

# A field value: visible characters, obs-text, space and tab; any other
# control character (CR, LF and NUL above all) is refused, as RFC 9110 5.5
# allows (a recipient may not pass them on).
FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\x00-\x20\x7f]+) HTTP/1\.([01])\Z")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):(" + FIELD_VALUE + rb")\Z")
# A whole request head (request line and header lines) in one match.
# Unambiguous (no two quantifiers can share a character), so it cannot
# backtrack badly on hostile input.
_REQUEST = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\x00-\x20\x7f]+) HTTP/1\.([01])"
    rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:" + FIELD_VALUE + rb")*\Z"
)
# A request head whose header lines need nothing removed or merged, in one
# match that also picks up the last Host, Cookie and Content-Length value
# (untrimmed).  The other lines exclude those names, so every line can be
# read one way only and the match stays linear.
_PLAIN_REQUEST = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\x00-\x20\x7f]+) HTTP/1\.([01])"
    rb"(?:\r\n(?:"
    rb"(?i:host):(" + FIELD_VALUE + rb")"
    rb"|(?i:cookie):(" + FIELD_VALUE + rb")"
    rb"|(?i:content-length):(" + FIELD_VALUE + rb")"
    rb"|(?!(?i:c(?:ookie|ontent-length|onnection)|host|keep-alive|t(?:e|railer|ransfer-encoding)|upgrade"
    rb"|proxy-[^:]*|x-forwarded-(?:for|proto)|forwarded|expect):)"
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:" + FIELD_VALUE +
    rb"))*\Z"
)
_COOKIE = re.compile(rb"\r\ncookie:")


def _line_end(block: bytes, start: int) -> int:
    end = block.find(CRLF, start)
    return len(block) if end < 0 else end


_DIGITS = re.compile(rb"[0-9]{1,18}\Z")

# Hop-by-hop headers (RFC 9110 7.6.1), never forwarded in either direction;
# Transfer-Encoding is added back when a chunked body is relayed as it came.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
    ]
)
# Request headers dropped before forwarding: the hop-by-hop ones, the
# forwarding headers we rewrite, and what the balancer answers itself.
_DROP_REQUEST = HOP_BY_HOP | {
    b"proxy-authorization",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"forwarded",
    b"expect",
}


# The most the balancer adds to a request head: X-Forwarded-For,
# X-Forwarded-Proto and Forwarded for the longest client address (an IPv6
# address with a zone), Connection: close, and a Host line when an
# absolute-form target is rewritten (what it removes is never shorter than
# what it puts back).  A session server accepts a balancer's limits plus
# this (L{server_limits}), so nothing a balancer accepts is refused there.
FORWARDING_ROOM = 512
FORWARDING_LINES = 5
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


def server_limits(max_header_bytes: Iterable[int], max_headers: Iterable[int]) -> Tuple[int, int]:
    """
    The request head size and header count a session server accepts
    behind balancers with these C{max_header_bytes} and C{max_headers}
    (the defaults of L{Limits} when there are none: a balancer of another
    make in front keeps within those too).
    """
    return (
        max(max_header_bytes, default=MAX_HEADER_BYTES) + FORWARDING_ROOM,
        max(max_headers, default=MAX_HEADERS) + FORWARDING_LINES,
    )


@frozen
class Limits:
    """
    What a client may send before it is refused.
    """

    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS
    max_body_bytes: int = 10 * 1024 * 1024


@frozen
class Reject:
    """
    A request refused before it reaches any server: answer C{status} and
    close the connection.
    """

    status: int
    reason: str


@define(slots=True)
class RequestHead:
    """
    What the proxy needs to know about one request, and the head to forward.

    C{forward} is the rewritten head, ending with the blank line; the body
    (C{length} bytes, or chunked when C{framing} is L{CHUNKED}) follows.
    """

    method: bytes
    target: bytes
    version: int
    host: Optional[bytes]
    cookie: Optional[bytes]
    framing: int
    length: int
    keep_alive: bool
    forward: bytes
    expect_continue: bool = False


def parse_request_head(
    head: bytes,
    limits: Limits,
    client: bytes,
    secure: bool,
) -> Union[RequestHead, Reject]:
    """
    Validate and rewrite one request head (without its final blank line).

    C{client} is the peer address for X-Forwarded-For and Forwarded;
    C{secure} says whether the client connection is TLS.  Anything that could
    be read two ways (both Content-Length and Transfer-Encoding, a bad or
    repeated Content-Length, whitespace before a colon, folded lines) is
    refused with 400, so no server behind us can read a different request
    boundary than ours.
    """
    # Every header line takes at least four bytes ("\r\nX:"), so a short
    # head cannot have too many.
    if len(head) > 4 * limits.max_headers and head.count(CRLF) > limits.max_headers:
        return Reject(431, "too many header lines")
    m = _PLAIN_REQUEST.match(head)
    if m is not None:
        # The common case: nothing to remove, so the head is forwarded as
        # it came; the match gave Host, Cookie and Content-Length (the last
        # of each), and one search for each present says whether it came
        # before too.  The request line cannot hold CRLF, so every
        # "\r\nname:" in the lower-cased head starts a header line.
        method, target, minor, host, cookie, length_value = m.group(1, 2, 3, 4, 5, 6)
        if target[0] != 47:  # not "/...", the origin form
            other = _other_form(head, method, target, limits, client, secure)
            if other is not None:
                return other
        version = 11 if minor == b"1" else 10
        if host is None and cookie is None and length_value is None:
            if version == 11:
                return Reject(400, "HTTP/1.1 request without Host")
            return RequestHead(method, target, version, None, None, NO_BODY, 0, False, head + _forwarding(client, secure, version))
        lower = head.lower()
        if host is None:
            if version == 11:
                return Reject(400, "HTTP/1.1 request without Host")
        else:
            if lower.find(b"\r\nhost:", 0, m.start(4) - 7) >= 0:
                return Reject(400, "more than one Host")
            host = host.strip(b" \t")
        if cookie is not None:
            if lower.find(b"\r\ncookie:", 0, m.start(5) - 9) >= 0:
                cookie = b"; ".join(
                    head[c.end() : _line_end(head, c.end())].strip(b" \t")
                    for c in _COOKIE.finditer(lower)
                )
            else:
                cookie = cookie.strip(b" \t")
        if length_value is None:
            framing = length = 0
        else:
            if lower.find(b"\r\ncontent-length:", 0, m.start(6) - 17) >= 0:
                return Reject(400, "more than one Content-Length")
            checked = _body_length(length_value.strip(b" \t"), limits)
            if isinstance(checked, Reject):
                return checked
            framing, length = checked
        suffix = _FORWARDING.get((client, secure, version))
        if suffix is None:
            suffix = _forwarding(client, secure, version)
        return RequestHead(method, target, version, host, cookie, framing, length, version == 11, head + suffix)
    m = _REQUEST.match(head)
    if m is None:
        i = head.find(CRLF)
        if _REQUEST_LINE.match(head if i < 0 else head[:i]) is None:
            return Reject(400, "malformed request line")
        return Reject(400, "malformed header line")
    method, target, minor = m.group(1, 2, 3)
    if target[0] != 47:
        other = _other_form(head, method, target, limits, client, secure)
        if other is not None:
            return other
    version = 11 if minor == b"1" else 10
    lines = head.split(CRLF)
    host = cookie = length_value = te = connection = None
    xff = forwarded = None
    expect = False
    out = [lines[0]]
    append = out.append
    match = _HEADER.match
    for line in lines[1:]:
        h = match(line)
        if h is None:
            return Reject(400, "malformed header line")
        name = h.group(1).lower()
        if name in _DROP_REQUEST:
            value = h.group(2).strip(b" \t")
            if name == b"transfer-encoding":
                te = value if te is None else te + b"," + value
            elif name == b"connection":
                connection = value if connection is None else connection + b"," + value
            elif name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
            elif name == b"forwarded":
                forwarded = value if forwarded is None else forwarded + b", " + value
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    return Reject(417, "unsupported expectation")
                expect = True
            continue
        if name == b"host":
            if host is not None:
                return Reject(400, "more than one Host")
            host = h.group(2).strip(b" \t")
        elif name == b"cookie":
            value = h.group(2).strip(b" \t")
            cookie = value if cookie is None else cookie + b"; " + value
        elif name == b"content-length":
            if length_value is not None:
                return Reject(400, "more than one Content-Length")
            length_value = h.group(2).strip(b" \t")
        append(line)
    return _finish_request(
        out, method, target, version, host, cookie, length_value, te, connection, xff, forwarded, limits, client, secure, expect
    )


def _finish_request(
    out, method, target, version, host, cookie, length_value, te, connection, xff, forwarded, limits, client, secure, expect
) -> Union[RequestHead, Reject]:
    if version == 11 and host is None:
        return Reject(400, "HTTP/1.1 request without Host")

    keep_alive = version == 11
    if connection is not None:
        tokens = [t.strip().lower() for t in connection.split(b",")]
        if b"close" in tokens:
            keep_alive = False
        listed = set(tokens) - {b"close", b"keep-alive", b""}
        if listed & {b"host", b"content-length", b"cookie"}:
            return Reject(400, "Connection lists an end-to-end header")
        if listed:
            out = [out[0]] + [
                line for line in out[1:] if line.split(b":", 1)[0].strip().lower() not in listed
            ]

    if te is not None:
        if length_value is not None:
            return Reject(400, "both Content-Length and Transfer-Encoding")
        if version == 10 or te.strip().lower() != b"chunked":
            return Reject(400, "unsupported Transfer-Encoding")
        framing, length = CHUNKED, 0
        out.append(b"Transfer-Encoding: chunked")
    elif length_value is not None:
        checked = _body_length(length_value, limits)
        if isinstance(checked, Reject):
            return checked
        framing, length = checked
    else:
        framing, length = NO_BODY, 0

    out.append(b"X-Forwarded-For: " + (client if xff is None else xff + b", " + client))
    proto = b"https" if secure else b"http"
    out.append(b"X-Forwarded-Proto: " + proto)
    fwd = b"for=" + _forwarded_node(client) + b";proto=" + proto
    out.append(b"Forwarded: " + (fwd if forwarded is None else forwarded + b", " + fwd))
    if version == 10:
        out.append(b"Connection: close")
    out.append(b"\r\n")
    return RequestHead(
        method=method,
        target=target,
        version=version,
        host=host,
        cookie=cookie,
        framing=framing,
        length=length,
        keep_alive=keep_alive,
        forward=CRLF.join(out),
        expect_continue=expect and version == 11 and framing != NO_BODY,
    )


# An absolute-form target: scheme, authority (no user info), the rest.
_ABSOLUTE = re.compile(rb"(?i:https?)://([A-Za-z0-9._~!$&'()*+,;=%:\[\]-]+)([/?][^#]*)?\Z")


def _other_form(
    head: bytes, method: bytes, target: bytes, limits: Limits, client: bytes, secure: bool
) -> Union[RequestHead, Reject, None]:
    """
    A request target not in origin form.  The absolute form
    (C{http://host/path}) is forwarded in origin form with the authority as
    Host, replacing any Host line (RFC 9112 3.2.2: the target's authority
    wins); C{OPTIONS *} goes on as it is (C{None}); anything else is
    refused.
    """
    if target == b"*":
        return None if method == b"OPTIONS" else Reject(400, "malformed request target")
    m = _ABSOLUTE.match(target)
    if m is None:
        return Reject(400, "malformed request target")
    authority, rest = m.group(1, 2)
    if not rest:
        rest = b"/"
    elif rest[0] == 63:  # "?query" right after the authority
        rest = b"/" + rest
    lines = head.split(CRLF)
    version = lines[0][-8:]
    out = [method + b" " + rest + b" " + version, b"Host: " + authority]
    out.extend(line for line in lines[1:] if line[:5].lower() != b"host:")
    return parse_request_head(CRLF.join(out), limits, client, secure)


_FORWARDING: Dict[Tuple[bytes, bool, int], bytes] = {}


def _forwarding(client: bytes, secure: bool, version: int) -> bytes:
    """
    The forwarding headers that end a head with nothing to merge them
    with; the same few clients send most requests, so they are kept.
    """
    key = (client, secure, version)
    suffix = _FORWARDING.get(key)
    if suffix is None:
        proto = b"https" if secure else b"http"
        suffix = (
            b"\r\nX-Forwarded-For: " + client
            + b"\r\nX-Forwarded-Proto: " + proto
            + b"\r\nForwarded: for=" + _forwarded_node(client) + b";proto=" + proto
            + (b"\r\nConnection: close" if version == 10 else b"")
            + b"\r\n\r\n"
        )
        if len(_FORWARDING) > 4096:
            _FORWARDING.clear()
        _FORWARDING[key] = suffix
    return suffix


def _forwarded_node(client: bytes) -> bytes:
    if b":" in client:
        return b'"[' + client + b']"'
    return client


def simple_response(status: int, reason: str, body: bytes = b"", extra: Tuple[bytes, ...] = (), close: bool = True) -> bytes:
    """
    A complete small response generated by the balancer itself.
    """
    lines: List[bytes] = [b"HTTP/1.1 %d %s" % (status, reason.encode("ascii"))]
    lines.extend(extra)
    lines.append(b"Content-Type: text/plain; charset=utf-8")
    lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return CRLF.join(lines) + HEAD_END + body


REASONS = {
    200: "OK",
    301: "Moved Permanently",
    308: "Permanent Redirect",
    400: "Bad Request",
    408: "Request Timeout",
    417: "Expectation Failed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_response(status: int, close: bool = True) -> bytes:
    reason = REASONS.get(status, "Error")
    return simple_response(status, reason, reason.encode("ascii") + b"\n", close=close)


def _body_length(value: bytes, limits: "Limits") -> Union[Tuple[int, int], "Reject"]:
    """
    The framing and length a request's Content-Length value announces, or
    why it is refused.
    """
    if _DIGITS.match(value) is None:
        return Reject(400, "invalid Content-Length")
    length = int(value)
    if length > limits.max_body_bytes:
        return Reject(413, "request body too large")
    return (LENGTH if length else NO_BODY), length
