"""
Tests for L{appliance.balancer.framing}, L{appliance.balancer.response} and
L{appliance.balancer.chunked}: request-head validation and rewriting,
response framing, chunked scanning.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance.balancer.chunked import ChunkedScanner
from appliance.balancer.framing import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Limits,
    Reject,
    RequestHead,
    parse_request_head,
)
from appliance.balancer.response import parse_response_head

LIMITS = Limits(max_header_bytes=16384, max_headers=10, max_body_bytes=1000)


def request(*lines: bytes, limits: Limits = LIMITS, secure: bool = False):
    return parse_request_head(b"\r\n".join(lines), limits, b"10.0.0.9", secure)


def header_lines(head: RequestHead):
    return head.forward.split(b"\r\n")[1:-2]


class RequestHeadTests(SynchronousTestCase):
    def test_simple_get(self):
        """A plain GET is accepted, keeps its headers and has no body."""
        head = request(b"GET /a?b=1 HTTP/1.1", b"Host: example", b"Accept: */*")
        self.assertIsInstance(head, RequestHead)
        self.assertEqual((head.method, head.target, head.version), (b"GET", b"/a?b=1", 11))
        self.assertEqual(head.framing, NO_BODY)
        self.assertTrue(head.keep_alive)
        self.assertEqual(head.host, b"example")
        self.assertTrue(head.forward.startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n"))
        self.assertTrue(head.forward.endswith(b"\r\n\r\n"))

    def test_cookie_found(self):
        """The Cookie header value is picked up, several headers joined."""
        head = request(b"GET / HTTP/1.1", b"Host: x", b"Cookie: a=1", b"cookie: b=2")
        self.assertEqual(head.cookie, b"a=1; b=2")

    def test_forwarding_headers_added(self):
        """X-Forwarded-For, X-Forwarded-Proto and Forwarded name the client."""
        lines = header_lines(request(b"GET / HTTP/1.1", b"Host: x"))
        self.assertIn(b"X-Forwarded-For: 10.0.0.9", lines)
        self.assertIn(b"X-Forwarded-Proto: http", lines)
        self.assertIn(b"Forwarded: for=10.0.0.9;proto=http", lines)

    def test_forwarding_headers_appended(self):
        """Existing X-Forwarded-For and Forwarded are extended, a client's X-Forwarded-Proto replaced."""
        lines = header_lines(
            request(
                b"GET / HTTP/1.1",
                b"Host: x",
                b"X-Forwarded-For: 1.2.3.4",
                b"X-Forwarded-Proto: https",
                b"Forwarded: for=1.2.3.4",
                secure=False,
            )
        )
        self.assertIn(b"X-Forwarded-For: 1.2.3.4, 10.0.0.9", lines)
        self.assertIn(b"Forwarded: for=1.2.3.4, for=10.0.0.9;proto=http", lines)
        self.assertEqual([l for l in lines if l.lower().startswith(b"x-forwarded-proto")], [b"X-Forwarded-Proto: http"])

    def test_secure_proto(self):
        """A TLS client is forwarded as https."""
        lines = header_lines(request(b"GET / HTTP/1.1", b"Host: x", secure=True))
        self.assertIn(b"X-Forwarded-Proto: https", lines)

    def test_hop_by_hop_removed(self):
        """Connection, the headers it names, Keep-Alive, TE, Trailer, Upgrade and Proxy-* are not forwarded."""
        head = request(
            b"GET / HTTP/1.1",
            b"Host: x",
            b"Connection: keep-alive, X-Secret",
            b"X-Secret: 1",
            b"Keep-Alive: timeout=5",
            b"TE: trailers",
            b"Trailer: X",
            b"Upgrade: websocket",
            b"Proxy-Connection: keep-alive",
            b"Proxy-Authorization: Basic eA==",
        )
        names = {l.split(b":")[0].lower() for l in header_lines(head)}
        self.assertEqual(names, {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"})
        self.assertTrue(head.keep_alive)

    def test_connection_close(self):
        """Connection: close ends keep-alive after this request."""
        self.assertFalse(request(b"GET / HTTP/1.1", b"Host: x", b"Connection: close").keep_alive)

    def test_http10(self):
        """HTTP/1.0 is forwarded as is with Connection: close, and the client closed after."""
        head = request(b"GET / HTTP/1.0", b"Connection: keep-alive")
        self.assertEqual(head.version, 10)
        self.assertFalse(head.keep_alive)
        self.assertIn(b"Connection: close", header_lines(head))

    def test_content_length(self):
        """A body with Content-Length is framed by its length."""
        head = request(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 12")
        self.assertEqual((head.framing, head.length), (LENGTH, 12))
        self.assertIn(b"Content-Length: 12", header_lines(head))

    def test_chunked(self):
        """A chunked body is relayed chunked."""
        head = request(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked")
        self.assertEqual(head.framing, CHUNKED)
        self.assertIn(b"Transfer-Encoding: chunked", header_lines(head))

    def assertRejected(self, status, *lines, limits=LIMITS):
        result = request(*lines, limits=limits)
        self.assertIsInstance(result, Reject)
        self.assertEqual(result.status, status, result.reason)

    def test_smuggling_both(self):
        """Content-Length together with Transfer-Encoding is refused."""
        self.assertRejected(400, b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 3", b"Transfer-Encoding: chunked")

    def test_bad_content_length(self):
        """A Content-Length that is not a plain number is refused."""
        for value in (b"-1", b"1,1", b"0x10", b"+5", b"", b"1 2"):
            self.assertRejected(400, b"POST / HTTP/1.1", b"Host: x", b"Content-Length: " + value)

    def test_two_content_lengths(self):
        """Two Content-Length headers are refused."""
        self.assertRejected(400, b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 3", b"Content-Length: 3")

    def test_unknown_transfer_encoding(self):
        """Only chunked is understood as a Transfer-Encoding."""
        self.assertRejected(400, b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: gzip, chunked")
        self.assertRejected(400, b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked, identity")

    def test_space_before_colon(self):
        """Whitespace between a header name and its colon is refused."""
        self.assertRejected(400, b"GET / HTTP/1.1", b"Host: x", b"Content-Length : 3")

    def test_folded_line(self):
        """Obsolete line folding is refused."""
        self.assertRejected(400, b"GET / HTTP/1.1", b"Host: x", b"X-A: 1", b" continued")

    def test_bare_lf(self):
        """A bare LF inside the head is refused."""
        self.assertRejected(400, b"GET / HTTP/1.1", b"Host: x\nContent-Length: 5")

    def test_malformed_request_line(self):
        """Request lines that are not METHOD SP target SP HTTP/1.x are refused."""
        for line in (b"GET /", b"GET  / HTTP/1.1", b"GET / HTTP/2.0", b"G\x00T / HTTP/1.1", b"GET / HTTP/1.1 x"):
            self.assertRejected(400, line, b"Host: x")

    def test_missing_host(self):
        """HTTP/1.1 requires Host; two are refused too."""
        self.assertRejected(400, b"GET / HTTP/1.1", b"Accept: */*")
        self.assertRejected(400, b"GET / HTTP/1.1", b"Host: a", b"Host: b")

    def test_too_many_headers(self):
        """More header lines than max_headers get 431."""
        self.assertRejected(431, b"GET / HTTP/1.1", b"Host: x", *[b"X-%d: 1" % i for i in range(10)])

    def test_body_too_large(self):
        """A Content-Length over max_body_bytes gets 413."""
        self.assertRejected(413, b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 1001")

    def test_hostile_whitespace_is_fast(self):
        """Long runs of whitespace in header values are parsed in linear time."""
        import time

        spaces = b" " * 8000
        lines = [b"GET / HTTP/1.1", b"Host: x"] + [b"X-%d:%s%s" % (i, spaces, b"a" + spaces) for i in range(2)]
        started = time.perf_counter()
        request(*lines, b"Bad Header: 1", limits=Limits(65536, 100, 10))
        request(*lines, b"Connection: x", limits=Limits(65536, 100, 10))
        self.assertLess(time.perf_counter() - started, 0.5)

    def test_values_trimmed(self):
        """Header values are read without surrounding whitespace on both paths."""
        fast = request(b"POST / HTTP/1.1", b"Host:  x \t", b"Content-Length:\t5 ", b"Cookie:  a=1  ")
        slow = request(b"POST / HTTP/1.1", b"Host:  x \t", b"Content-Length:\t5 ", b"Cookie:  a=1  ", b"Connection: keep-alive")
        for head in (fast, slow):
            self.assertEqual((head.host, head.length, head.cookie), (b"x", 5, b"a=1"))

    def test_expect_continue(self):
        """Expect: 100-continue is answered by the balancer, not forwarded; other expectations get 417."""
        head = request(b"POST / HTTP/1.1", b"Host: x", b"Expect: 100-continue", b"Content-Length: 5")
        self.assertTrue(head.expect_continue)
        self.assertNotIn(b"Expect", head.forward)
        self.assertRejected(417, b"POST / HTTP/1.1", b"Host: x", b"Expect: magic", b"Content-Length: 5")

    def test_connection_naming_framing(self):
        """Connection may not name Content-Length or Host (it would drop framing)."""
        self.assertRejected(400, b"POST / HTTP/1.1", b"Host: x", b"Connection: content-length", b"Content-Length: 3")


class ResponseHeadTests(SynchronousTestCase):
    def parse(self, *lines, method=b"GET", cookie=None, secure=False, keep=True):
        return parse_response_head(b"\r\n".join(lines), method, cookie, secure, keep)

    def test_length(self):
        """Content-Length frames the body; the connection stays reusable."""
        head = self.parse(b"HTTP/1.1 200 OK", b"Content-Length: 5")
        self.assertEqual((head.status, head.framing, head.length, head.reusable), (200, LENGTH, 5, True))
        self.assertIsNone(head.relay)

    def test_chunked(self):
        """A chunked response is relayed chunked."""
        head = self.parse(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
        self.assertEqual(head.framing, CHUNKED)
        self.assertIn(b"Transfer-Encoding: chunked", head.relay)

    def test_until_close(self):
        """No length: read until the server closes, and close the client too."""
        head = self.parse(b"HTTP/1.1 200 OK")
        self.assertEqual((head.framing, head.reusable), (UNTIL_CLOSE, False))
        self.assertIn(b"Connection: close", head.relay)

    def test_no_body(self):
        """HEAD, 204 and 304 responses have no body whatever they say."""
        self.assertEqual(self.parse(b"HTTP/1.1 200 OK", b"Content-Length: 5", method=b"HEAD").framing, NO_BODY)
        self.assertEqual(self.parse(b"HTTP/1.1 204 No Content").framing, NO_BODY)
        self.assertEqual(self.parse(b"HTTP/1.1 304 Not Modified").framing, NO_BODY)

    def test_server_close(self):
        """Connection: close from the server makes the connection not reusable, and is not relayed."""
        head = self.parse(b"HTTP/1.1 200 OK", b"Connection: close", b"Content-Length: 0", b"Keep-Alive: x")
        self.assertFalse(head.reusable)
        self.assertNotIn(b"Connection", head.relay)
        self.assertNotIn(b"Keep-Alive", head.relay)

    def test_client_close(self):
        """When the client will be closed, the relayed head says so."""
        head = self.parse(b"HTTP/1.1 200 OK", b"Content-Length: 0", keep=False)
        self.assertIn(b"Connection: close", head.relay)

    def test_session_cookie(self):
        """The session cookie value is reported, other cookies ignored."""
        head = self.parse(
            b"HTTP/1.1 200 OK",
            b"Set-Cookie: OTHER=1",
            b"Set-Cookie: APPSESSION=abc!s1!s2; Path=/; HttpOnly",
            b"Content-Length: 0",
            cookie=b"APPSESSION",
        )
        self.assertEqual(head.session, b"abc!s1!s2")

    def test_secure_flag(self):
        """Over TLS the session cookie gets Secure, once."""
        head = self.parse(
            b"HTTP/1.1 200 OK",
            b"Set-Cookie: APPSESSION=abc!s1!; Path=/; HttpOnly",
            b"Set-Cookie: OTHER=1",
            b"Content-Length: 0",
            cookie=b"APPSESSION",
            secure=True,
        )
        self.assertIn(b"Set-Cookie: APPSESSION=abc!s1!; Path=/; HttpOnly; Secure\r\n", head.relay)
        self.assertIn(b"Set-Cookie: OTHER=1\r\n", head.relay)
        again = self.parse(
            b"HTTP/1.1 200 OK", b"Set-Cookie: APPSESSION=a; Secure", b"Content-Length: 0", cookie=b"APPSESSION", secure=True
        )
        self.assertEqual(again.relay.count(b"Secure"), 1)

    def test_malformed(self):
        """Heads we cannot relay safely read as None (502)."""
        self.assertIsNone(self.parse(b"HTTP/2 200 OK"))
        self.assertIsNone(self.parse(b"HTTP/1.1 200 OK", b"Content-Length: x"))
        self.assertIsNone(self.parse(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Content-Length: 2"))
        self.assertIsNone(self.parse(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip"))
        self.assertIsNone(self.parse(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Content-Length: 5"))
        self.assertIsNone(self.parse(b"HTTP/1.1 200 OK", b"X-A: a\x01b", b"Content-Length: 5"))
        self.assertIsNone(self.parse(b"HTTP/1.1 200 OK", b"Bad Header: 1"))


class ChunkedScannerTests(SynchronousTestCase):
    BODY = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"

    def test_whole(self):
        """A whole chunked body ends where the trailer section ends."""
        s = ChunkedScanner()
        self.assertEqual(s.feed(self.BODY + b"NEXT"), len(self.BODY))
        self.assertEqual(s.size, 11)

    def test_byte_by_byte(self):
        """Fed a byte at a time the end is found at the last byte."""
        s = ChunkedScanner()
        results = [s.feed(self.BODY[i : i + 1]) for i in range(len(self.BODY))]
        self.assertEqual(results[:-1], [-1] * (len(self.BODY) - 1))
        self.assertEqual(results[-1], 1)

    def test_malformed(self):
        """Bad sizes and chunks longer than announced raise ValueError."""
        for body in (b"zz\r\n", b"-1\r\n", b"5\r\nhelloX\r\n", b"0x5\r\nhello\r\n", b"5\nhello\r\n"):
            self.assertRaises(ValueError, ChunkedScanner().feed, body)


from hypothesis import given, settings
from hypothesis import strategies as st

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)
_VALUE = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if c not in b"\x00\r\n").strip(b" \t")
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        payload=st.lists(st.binary(min_size=1, max_size=50), max_size=8),
        cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=20),
    )
    def test_chunked_end_found_however_cut(self, payload, cuts):
        """However a chunked body is split into reads, its end is found exactly."""
        body = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in payload) + b"0\r\n\r\n"
        stream = body + b"NEXT"
        scanner, i, end = ChunkedScanner(), 0, None
        for cut in cuts + [len(stream)]:
            piece = stream[i : i + cut]
            k = scanner.feed(piece)
            if k >= 0:
                end = i + k
                break
            i += len(piece)
        self.assertEqual(end, len(body))
        self.assertEqual(scanner.size, sum(len(p) for p in payload))

    @settings(max_examples=200, deadline=None)
    @given(
        extra=st.lists(st.tuples(_TOKEN, _VALUE), max_size=8),
        length=st.one_of(st.none(), st.integers(min_value=0, max_value=999)),
        cookie=st.one_of(st.none(), _VALUE),
    )
    def test_fast_and_slow_paths_agree(self, extra, length, cookie):
        """The as-is path and the line-by-line path read a request the same way."""
        lines = [b"POST /x HTTP/1.1", b"Host: h"]
        lines += [
            name.encode() + b": " + value
            for name, value in extra
            if name.lower() not in ("host", "content-length", "cookie", "transfer-encoding", "te", "trailer", "upgrade", "connection", "keep-alive", "forwarded", "x-forwarded-for", "x-forwarded-proto")
            and not name.lower().startswith("proxy-")
        ]
        if length is not None:
            lines.append(b"Content-Length: %d" % length)
        if cookie is not None:
            lines.append(b"Cookie: " + cookie)
        roomy = Limits(max_header_bytes=16384, max_headers=100, max_body_bytes=1000)
        fast = request(*lines, limits=roomy)
        slow = request(*(lines + [b"Connection: keep-alive"]), limits=roomy)
        self.assertEqual(type(fast), type(slow))
        if isinstance(fast, RequestHead):
            for attribute in ("method", "target", "version", "host", "cookie", "framing", "length", "keep_alive"):
                self.assertEqual(getattr(fast, attribute), getattr(slow, attribute), attribute)
            self.assertEqual(fast.forward, slow.forward)
        else:
            self.assertEqual(fast.status, slow.status)

    @settings(max_examples=200, deadline=None)
    @given(
        extra=st.lists(st.tuples(_TOKEN, _VALUE), max_size=6),
        length=st.one_of(st.none(), st.integers(min_value=0, max_value=999), st.just(b" 12 "), st.just(b"1x")),
        status=st.sampled_from([100, 200, 204, 304, 404, 502]),
        minor=st.sampled_from([b"0", b"1"]),
        method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
        split=st.integers(min_value=0, max_value=6),
    )
    def test_response_fast_and_slow_paths_agree(self, extra, length, status, minor, method, split):
        """The one-match response path reads a head as the line-by-line path does."""
        lines = [b"HTTP/1.%s %d X" % (minor, status)]
        lines += [
            name.encode() + b": " + value
            for name, value in extra
            if name.lower() not in ("content-length", "transfer-encoding", "te", "trailer", "upgrade", "connection", "keep-alive", "proxy-connection", "proxy-authenticate")
        ]
        if length is not None:
            value = length if isinstance(length, bytes) else b"%d" % length
            lines.insert(min(split, len(lines) - 1) + 1, b"content-LENGTH:" + value)
        head = b"\r\n".join(lines)
        fast = parse_response_head(head, method, None, False, True)
        # A cookie name that no header carries forces the line-by-line path.
        slow = parse_response_head(head, method, b"NOSUCHCOOKIE", False, True)
        self.assertEqual(type(fast), type(slow))
        if fast is not None:
            for attribute in ("status", "framing", "length", "reusable", "session"):
                self.assertEqual(getattr(fast, attribute), getattr(slow, attribute), attribute)
            self.assertEqual(head + b"\r\n\r\n" if fast.relay is None else fast.relay, slow.relay)


class PlainRequestTests(SynchronousTestCase):
    def test_repeats_found_wherever_they_are(self):
        """On the as-is path a repeated Host or Content-Length is refused and Cookies are joined, in any order."""
        self.assertEqual(request(b"GET / HTTP/1.1", b"Host: a", b"A: 1", b"host: b").status, 400)
        self.assertEqual(request(b"GET / HTTP/1.1", b"HOST: a", b"Host: b", b"A: 1").status, 400)
        self.assertEqual(
            request(b"POST / HTTP/1.1", b"Content-Length: 1", b"Host: a", b"content-length: 1").status, 400
        )
        head = request(b"GET / HTTP/1.1", b"Cookie: a=1", b"Host: a", b"COOKIE:  b=2 ", b"X: y")
        self.assertEqual((head.host, head.cookie), (b"a", b"a=1; b=2"))
        head = request(b"GET / HTTP/1.1", b"Host:  a ", b"Cookie: c=3 ")
        self.assertEqual((head.host, head.cookie), (b"a", b"c=3"))

    def test_http10_without_headers(self):
        """An HTTP/1.0 request without headers is forwarded with Connection: close and not kept alive."""
        head = request(b"GET / HTTP/1.0")
        self.assertFalse(head.keep_alive)
        self.assertIn(b"Connection: close", head.forward)
        self.assertEqual(request(b"GET / HTTP/1.1").status, 400)

    def test_long_head_still_counted(self):
        """Past the length below which no head can have too many lines, lines are counted."""
        limits = Limits(max_header_bytes=16384, max_headers=3, max_body_bytes=1000)
        self.assertEqual(request(b"GET / HTTP/1.1", b"Host: a", b"A: 1", b"B: 2", limits=limits).host, b"a")
        self.assertEqual(request(b"GET / HTTP/1.1", b"Host: a", b"A: 1", b"B: 2", b"C: 3", limits=limits).status, 431)
