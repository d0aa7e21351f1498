"""
Bounded property-based fuzzing (hypothesis) of the balancer's parsers and
the cookie codec (issue 9, item 15): nothing crashes, what is accepted is
well-formed, and the twisted.web code the session servers run reads every
accepted request and chunked body with the same boundaries as the balancer.
A few hundred examples each: seconds in all.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from appliance import cookie
from appliance.balancer.chunked import ChunkedScanner
from appliance.balancer.framing import (
    CHUNKED,
    FORWARDING_LINES,
    FORWARDING_ROOM,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Limits,
    Reject,
    RequestHead,
    parse_request_head,
)
from appliance.balancer.response import parse_response_head

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_header_bytes=16384, max_headers=100, max_body_bytes=100_000)
# The longest client address the forwarding headers can name.
CLIENT = b"fe80::ffff:ffff:ffff:ffff%interface-name1"

_FIELD_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\Z")
_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ /[^\x00-\x20\x7f]* HTTP/1\.[01]\Z|OPTIONS \* HTTP/1\.[01]\Z")

# Pieces hostile heads are made of: names that matter for framing, in
# several spellings, values with every kind of trouble; mostly well-formed,
# so that many heads are accepted and their reading is checked.
NAMES = st.sampled_from(
    [b"X-A", b"Accept", b"Host", b"Content-Length", b"content-length", b"Transfer-Encoding",
     b"transfer-encoding", b"Connection", b"Cookie", b"Expect", b"TE", b"Upgrade", b"Keep-Alive",
     b"X-Forwarded-For", b"Forwarded", b"Trailer", b"Proxy-Connection", b"User-Agent", b"Transfer_Encoding"]
)
ODD_NAMES = st.sampled_from([b"Content-Length ", b" Host", b"", b"X\x00", b"Host\t"])
VALUES = st.sampled_from(
    [b"", b"x", b"chunked", b" chunked", b"chunked ", b"CHUNKED", b"chunked, identity", b"identity",
     b"0", b"5", b"05", b"12", b"+5", b"-1", b"5, 5", b"0x5", b"close", b"keep-alive", b"content-length",
     b"x-a", b"host", b"100-continue", b"APPSESSION=AAAAAAAAAAAAAAAAAAAAAA!s1!s2", b"1.2.3.4", b"\tchunked",
     b"a\tb", b"\xe9t\xe9", b"text"]
)
# The values a name mostly gets, so that framing headers are often valid.
NAMED_VALUES = {
    b"content-length": [b"0", b"5", b"12", b" 7 ", b"05", b"5, 5", b"+5"],
    b"transfer-encoding": [b"chunked", b"chunked", b"CHUNKED", b"\tchunked ", b"gzip, chunked", b"identity"],
    b"expect": [b"100-continue", b"100-Continue", b"x"],
    b"connection": [b"close", b"keep-alive", b"x-a", b"te, close", b"content-length"],
    b"host": [b"h", b"h:1", b"[::1]:8"],
}
METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"HEAD", b"get", b"G T", b""])
TARGETS = st.sampled_from(
    [b"/", b"/", b"/", b"/a?b", b"/cart/items", b"*", b"http://h/x", b"HTTP://h:1?q", b"http://u@h/", b"a", b"/\x00",
     b"/_appliance/lb-health"]
)
VERSIONS = st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b" http/1.1", b"HTTP/1.1", b" HTTP/1.1 "])
COLONS = st.sampled_from([b": ", b":", b":\t", b" :"])
ODD_SEPARATORS = st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\r\n "])


def mostly(draw, usual, odd, one_in: int):
    """C{usual}, or (when C{one_in}) once in C{one_in} draws a value of C{odd}."""
    return draw(odd) if one_in and draw(st.integers(1, one_in)) == 1 else usual


@st.composite
def lines(draw, hostile: bool) -> bytes:
    if hostile and draw(st.integers(1, 60)) == 1:
        return draw(st.binary(max_size=20))
    name = mostly(draw, draw(NAMES), ODD_NAMES, 40 * hostile)
    usual = draw(st.sampled_from(NAMED_VALUES.get(name.lower(), ())) if name.lower() in NAMED_VALUES else VALUES)
    value = mostly(draw, usual if draw(st.integers(1, 4)) > 1 else draw(VALUES), st.binary(max_size=12), 25 * hostile)
    return name + mostly(draw, b": ", COLONS, 12 * hostile) + value


@st.composite
def heads(draw, hostile: bool = True) -> bytes:
    """
    Request heads: plausible ones (any mix of framing headers, well-formed
    or not) or, C{hostile}, with broken lines, separators and bytes too.
    """
    if hostile and draw(st.integers(1, 30)) == 1:
        out = draw(st.binary(max_size=30))
    else:
        out = (
            mostly(draw, draw(st.sampled_from([b"GET", b"POST"])), METHODS, 6 * hostile)
            + mostly(draw, b" ", st.sampled_from([b"  ", b"\t"]), 30 * hostile)
            + draw(TARGETS if hostile else st.sampled_from([b"/", b"/a?b", b"http://h:1/x?y", b"/_appliance/lb-health"]))
            + mostly(draw, draw(st.sampled_from([b" HTTP/1.1", b" HTTP/1.0"])), VERSIONS, 8 * hostile)
        )
    found = draw(st.lists(lines(hostile), max_size=8))
    if draw(st.integers(1, 10)) > 2:
        found.insert(draw(st.integers(0, len(found))), b"Host: h")
    for line in found:
        out += mostly(draw, b"\r\n", ODD_SEPARATORS, 25 * hostile) + line
    return out


class _Seen(http.Request):
    """
    Records what twisted.web read of each request, and answers it at once so
    the next pipelined one is read.
    """

    def process(self):
        self.channel.seen.append((self.method, self.uri, self.content.read()))
        self.setResponseCode(200)
        self.finish()


def twisted_reads(data: bytes):
    """
    The requests twisted.web's HTTPChannel (the session servers' parser)
    reads from C{data}: (method, target, body) each.
    """
    channel = http.HTTPChannel()
    channel.requestFactory = _Seen
    channel.seen = []
    channel.makeConnection(StringTransport())
    channel.dataReceived(data)
    channel.connectionLost(None)
    return channel.seen


def body_for(head: RequestHead) -> bytes:
    if head.framing == LENGTH:
        return b"b" * head.length
    if head.framing == CHUNKED:
        return b"3\r\nabc\r\n0\r\n\r\n"
    return b""


class RequestHeadFuzz(SynchronousTestCase):
    @FUZZ
    @given(heads(hostile=False))
    def test_plausible_heads(self, head):
        """Heads mixing framing headers are refused or accepted, and an accepted one is well-formed and read alike by the servers."""
        self.check(head)

    @FUZZ
    @given(heads())
    def test_hostile_heads(self, head):
        """Heads with broken lines and bytes too are refused or accepted without an exception, and an accepted one is well-formed."""
        self.check(head)

    @FUZZ
    @given(st.binary(max_size=300))
    def test_random_bytes(self, head):
        """Random bytes never crash the parser; whatever it accepts is well-formed."""
        self.check(head)

    def check(self, head: bytes) -> None:
        result = parse_request_head(head, LIMITS, CLIENT, False)
        if isinstance(result, Reject):
            self.assertIn(result.status, (400, 413, 417, 431))
            return
        self.assertIsInstance(result, RequestHead)
        forward = result.forward
        self.assertTrue(forward.endswith(b"\r\n\r\n"))
        lines = forward[:-4].split(b"\r\n")
        self.assertRegex(lines[0], _REQUEST_LINE)
        for line in lines[1:]:
            self.assertRegex(line, _FIELD_LINE)
        names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
        self.assertLessEqual(names.count(b"host"), 1)
        if result.version == 11:
            self.assertEqual(names.count(b"host"), 1)
            self.assertNotIn(b"connection", names)
        if result.framing == CHUNKED:
            self.assertIn(b"Transfer-Encoding: chunked", lines)
            self.assertEqual((names.count(b"transfer-encoding"), names.count(b"content-length")), (1, 0))
        else:
            self.assertEqual(names.count(b"transfer-encoding"), 0)
            self.assertLessEqual(names.count(b"content-length"), 1)
        # Room for what the balancer adds, as the session servers' limits assume.
        self.assertLessEqual(len(forward) - 4, len(head) + FORWARDING_ROOM)
        self.assertLessEqual(len(lines), head.count(b"\r\n") + 1 + FORWARDING_LINES)
        # Read again, the forwarded head says the same thing.
        again = parse_request_head(forward[:-4], LIMITS, CLIENT, False)
        self.assertIsInstance(again, RequestHead)
        for attribute in ("method", "target", "version", "host", "cookie", "framing", "length"):
            self.assertEqual(getattr(again, attribute), getattr(result, attribute), attribute)
        # The session servers read the same request, with the same body, and
        # the next request after it.
        body = body_for(result)
        seen = twisted_reads(forward + body + b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n")
        if result.version == 10:
            seen = seen[:1]
        expected = [(result.method, result.target, b"abc" if result.framing == CHUNKED else body)]
        if result.version == 11:
            expected.append((b"GET", b"/next", b""))
        self.assertEqual(seen, expected)

    @FUZZ
    @given(
        st.lists(st.tuples(st.sampled_from([b"X-A", b"Cookie", b"Accept", b"X-Forwarded-For", b"Forwarded"]),
                           st.binary(max_size=30).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F))),
                 max_size=8),
        st.sampled_from([b"127.0.0.1", b"::1", CLIENT]),
        st.booleans(),
    )
    def test_forwarding_headers(self, extra, client, secure):
        """X-Forwarded-For and Forwarded end with the client, X-Forwarded-Proto names the scheme, once each."""
        head = b"\r\n".join([b"GET / HTTP/1.1", b"Host: h"] + [n + b": " + v for n, v in extra])
        result = parse_request_head(head, LIMITS, client, secure)
        lines = result.forward[:-4].split(b"\r\n")
        xff = [line for line in lines if line.lower().startswith(b"x-forwarded-for:")]
        proto = [line for line in lines if line.lower().startswith(b"x-forwarded-proto:")]
        self.assertEqual(len(xff), 1)
        self.assertTrue(xff[0].endswith(client))
        self.assertEqual(proto, [b"X-Forwarded-Proto: " + (b"https" if secure else b"http")])


class ResponseHeadFuzz(SynchronousTestCase):
    @st.composite
    def responses(draw) -> bytes:
        status = draw(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204", b"HTTP/1.1 304 N",
                                       b"HTTP/1.1 100 Continue", b"HTTP/1.1 404 Not\x01Found", b"HTTP/2 200",
                                       b"HTTP/1.1 20 x"]))
        out = status
        for line in draw(st.lists(lines(True), max_size=8)):
            out += mostly(draw, b"\r\n", ODD_SEPARATORS, 25) + line
        return out

    @FUZZ
    @given(
        st.one_of(responses(), st.binary(max_size=200)),
        st.sampled_from([b"GET", b"HEAD"]),
        st.sampled_from([None, b"APPSESSION"]),
        st.booleans(),
        st.booleans(),
    )
    def test_hostile_responses(self, head, method, cookie_name, secure, keep):
        """Any response head is refused (None) or read without an exception, and the head relayed is well-formed."""
        result = parse_response_head(head, method, cookie_name, secure, keep)
        if result is None:
            return
        relay = head + b"\r\n\r\n" if result.relay is None else result.relay
        self.assertTrue(relay.endswith(b"\r\n\r\n"))
        lines = relay[:-4].split(b"\r\n")
        self.assertRegex(lines[0], rb"HTTP/1\.[01] [0-9]{3}( [\t\x20-\x7e\x80-\xff]*)?\Z")
        names = []
        for line in lines[1:]:
            self.assertRegex(line, _FIELD_LINE)
            names.append(line.split(b":", 1)[0].lower())
        if result.framing == CHUNKED:
            self.assertEqual((names.count(b"transfer-encoding"), names.count(b"content-length")), (1, 0))
        elif result.framing == LENGTH:
            values = [line.split(b":", 1)[1].strip(b" \t") for line in lines[1:] if line.lower().startswith(b"content-length:")]
            self.assertEqual({int(v) for v in values}, {result.length})
            self.assertEqual(names.count(b"transfer-encoding"), 0)
        elif result.framing == UNTIL_CLOSE:
            self.assertIn(b"Connection: close", lines)
            self.assertFalse(result.reusable)
        for hop in (b"keep-alive", b"te", b"trailer", b"upgrade", b"proxy-connection"):
            if result.relay is not None:
                self.assertNotIn(hop, names)
        if not keep:
            self.assertIn(b"Connection: close", lines)


class ChunkedFuzz(SynchronousTestCase):
    @FUZZ
    @given(
        st.lists(st.binary(min_size=1, max_size=40), max_size=6),
        st.lists(st.sampled_from([b"", b";a", b";a=b", b';a="q q"']), min_size=7, max_size=7),
        st.lists(st.sampled_from([b"X-T: 1", b"Sum:abc"]), max_size=2),
        st.booleans(),
        st.lists(st.integers(min_value=1, max_value=25), max_size=30),
    )
    def test_round_trip(self, payload, extensions, trailers, upper, cuts):
        """A chunked body however encoded and cut into reads ends exactly where it ends, with its size counted."""
        body = b""
        for piece, ext in zip(payload, extensions):
            size = b"%x" % len(piece)
            body += (size.upper() if upper else size) + ext + b"\r\n" + piece + b"\r\n"
        body += b"0" + extensions[-1] + b"\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
        stream = body + b"NEXT"
        scanner, i, end = ChunkedScanner(), 0, None
        for cut in cuts + [len(stream)]:
            k = scanner.feed(stream[i : i + cut])
            if k >= 0:
                end = i + k
                break
            i += cut
        self.assertEqual(end, len(body))
        self.assertEqual(scanner.size, sum(len(p) for p in payload))
        self.assertEqual(twisted_chunked(stream), (b"".join(payload), b"NEXT"))

    @FUZZ
    @given(st.one_of(
        st.binary(max_size=80),
        st.lists(
            st.one_of(
                *[st.tuples(
                    st.sampled_from([b"5", b"3", b"0", b"A", b"a", b"05", b"+5", b" 5", b"5 ", b"0x5", b"-5", b"x", b""]),
                    st.sampled_from([b""] * 4 + [b";e", b";e=1", b";\x01", b" ;e"]),
                    st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]),
                    st.sampled_from([b"hello", b"abc", b"", b"hello!", b"X: 1\r\n", b"\r\n"]),
                    st.sampled_from([b"\r\n"] * 6 + [b"\n", b"", b"x\r\n"]),
                ).map(b"".join)] * 4,
                st.sampled_from([b"\r\n", b"X: 1\r\n", b"bad\r\n", b"0\r\n\r\n"]),
            ),
            max_size=6,
        ).map(b"".join),
    ))
    def test_hostile_bodies(self, data):
        """Random bodies raise nothing but ValueError; a body the scanner accepts ends where twisted.web's decoder says."""
        try:
            k = ChunkedScanner().feed(data)
        except ValueError:
            return
        if k >= 0:
            decoded = twisted_chunked(data)
            self.assertIsNotNone(decoded, data)
            self.assertEqual(decoded[1], data[k:])


def twisted_chunked(data: bytes):
    """
    What the session servers' chunked decoder makes of C{data}: (payload,
    bytes after the body), or C{None} if it refuses or wants more.
    """
    parts, rest = [], []
    decoder = http._ChunkedTransferDecoder(parts.append, rest.append)
    try:
        decoder.dataReceived(data)
    except http._MalformedChunkedDataError:
        return None
    if not rest:
        return None
    return b"".join(parts), rest[0]


SIDS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=22, max_size=22)
NODE_NAMES = ["s1", "s2", "s3"]


class CookieFuzz(SynchronousTestCase):
    @FUZZ
    @given(SIDS, st.sampled_from(NODE_NAMES), st.sampled_from(NODE_NAMES + [None]))
    def test_round_trip(self, sid, primary, secondary):
        """Encoding then decoding gives back the sid, primary and (a different) secondary."""
        route = cookie.decode(cookie.encode(sid, primary, secondary), NODE_NAMES)
        self.assertEqual(route, cookie.Route(sid, primary, secondary if secondary != primary else None))

    @FUZZ
    @given(st.lists(st.tuples(
        st.sampled_from([b"APPSESSION", b"XAPPSESSION", b"other", b"APPSESSIONX"]),
        st.one_of(
            st.tuples(SIDS.map(str.encode), st.sampled_from([b"s1", b"s2", b"s9", b""]), st.sampled_from([b"s1", b"s3", b""]))
            .map(b"!".join),
            st.binary(max_size=30).map(lambda b: b.replace(b";", b"")),
        ),
    ), max_size=6), st.sampled_from([b"; ", b";", b";  "]))
    def test_session_cookie_is_first_valid(self, pairs, separator):
        """The session cookie found is the first APPSESSION pair whose value reads as a session."""
        header = separator.join(name + b"=" + value for name, value in pairs)
        expected = (None, cookie.NO_ROUTE)
        for name, value in pairs:
            route = cookie.decode(value.strip(), NODE_NAMES)
            if name == b"APPSESSION" and route.sid is not None and (route.primary or route.secondary):
                expected = (value.strip(), route)
                break
        self.assertEqual(cookie.session_cookie(header, b"APPSESSION", NODE_NAMES), expected)

    @FUZZ
    @given(st.binary(max_size=300))
    def test_never_raises(self, header):
        """Any Cookie header gives a value and a route whose sid is valid and whose nodes are known, or nothing."""
        value, route = cookie.session_cookie(header, b"APPSESSION", NODE_NAMES)
        if value is None:
            self.assertEqual(route, cookie.NO_ROUTE)
        else:
            self.assertTrue(cookie.valid_sid(route.sid))
            self.assertTrue({route.primary, route.secondary} - {None} <= set(NODE_NAMES))
