"""
The balancer against hostile or unusual input, with fake transports and a
fake clock (issue 9): close-framed answers, pipelined local answers, every
timeout, internal endpoints, header values, absolute-form targets, two
session cookies, and the per-client limit on new sessions.
"""

from __future__ import annotations

import re

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.balancer.frontend import FrontendFactory

from .test_balancer_proxy import OK, SID, Harness

VALID = SID.encode() + b"!s1!s2"
COOKIE = b"Cookie: APPSESSION=" + VALID + b"\r\n"
NEW_SID = b"B" * 22
SETS_COOKIE = (
    b"HTTP/1.1 200 OK\r\nSet-Cookie: APPSESSION=" + NEW_SID + b"!s1!s2; Path=/; HttpOnly\r\n"
    b"Content-Length: 2\r\n\r\nok"
)


def statuses(data: bytes):
    return [int(code) for code in re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", data)]


class CloseFramedTests(SynchronousTestCase):
    """
    A response with neither Content-Length nor chunked framing ends when its
    server closes the connection (issue 9, item 2).
    """

    def test_relayed_to_the_end_then_client_closed(self):
        """The body is relayed until the server closes, and then the client connection is closed too."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n")
        port, server, st = h.accept()
        server.dataReceived(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>")
        server.dataReceived(b"bad</html>")
        self.assertFalse(h.client.disconnecting)
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            h.client.value(),
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html>bad</html>",
        )
        self.assertTrue(h.client.disconnecting)

    def test_pipelined_request_not_answered_into_the_body(self):
        """A request pipelined behind one answered close-framed never reaches a server, so its answer cannot join that body."""
        h = Harness(self)
        h.send(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n"
            b"GET /2 HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n"
        )
        port, server, st = h.accept()
        server.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
        server.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(h.client.value().endswith(b"\r\n\r\nuntil close"))
        self.assertTrue(h.client.disconnecting)
        self.assertNotIn(b"GET /2", st.value())
        self.assertEqual(len(h.reactor.tcpClients), 1)


class PipelinedLocalAnswerTests(SynchronousTestCase):
    """
    Requests the balancer answers itself, pipelined in one write (issue 9,
    item 6).
    """

    def test_thousands_in_one_write(self):
        """Thousands of pipelined lb-health requests in one write are all answered, in a loop, and the connection stays open."""
        h = Harness(self)
        h.send(b"GET /_appliance/lb-health HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)
        self.assertEqual(h.client.value().count(b"HTTP/1.1 200 OK\r\n"), 3000)
        self.assertFalse(h.client.disconnecting)
        self.assertEqual(h.reactor.tcpClients, [])

    def test_after_a_proxied_answer(self):
        """Local answers pipelined behind a proxied request follow its answer, in order, and the next proxied one goes out."""
        h = Harness(self)
        health = b"GET /_appliance/lb-health HTTP/1.1\r\nHost: x\r\n\r\n"
        h.send(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n" + health * 500
            + b"GET /2 HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n"
        )
        port, server, st = h.accept()
        st.clear()
        server.dataReceived(OK)
        self.assertEqual(statuses(h.client.value()), [200] * 501)
        self.assertTrue(h.client.value().startswith(OK))
        self.assertTrue(st.value().startswith(b"GET /2 "))


class TimeoutTests(SynchronousTestCase):
    """
    Deadlines for clients that send slowly, or wrongly (issue 9, item 7).
    """

    POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n" + COOKIE + b"\r\n"

    def test_trickled_body_times_out(self):
        """A body trickled one byte every two seconds gets 408 and never reaches a server."""
        h = Harness(self, body_timeout=10.0, min_body_rate=500, idle_timeout=60.0)
        h.send(self.POST)
        for _ in range(30):
            h.reactor.advance(2.0)
            h.balancer.sweep()
            if h.client.disconnecting:
                break
            h.send(b"x")
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 408 "))
        self.assertLessEqual(h.reactor.seconds(), 12.0)
        self.assertEqual(h.reactor.tcpClients, [])

    def test_body_at_the_minimum_rate_goes_through(self):
        """A body that keeps to min_body_rate is read to its end however long it takes."""
        h = Harness(self, body_timeout=5.0, min_body_rate=10, retry_body_bytes=1000)
        h.send(self.POST)
        for _ in range(10):
            h.reactor.advance(1.0)
            h.balancer.sweep()
            h.send(b"y" * 10)
        self.assertEqual(h.client.value(), b"")
        port, server, st = h.accept()
        self.assertTrue(st.value().endswith(b"\r\n\r\n" + b"y" * 100))

    def test_stalled_body_closed_after_body_timeout(self):
        """A body that stops after a fast start gets 408 body_timeout after its last bytes, whatever it sent before."""
        h = Harness(self, body_timeout=5.0, min_body_rate=10, retry_body_bytes=1_000_000, max_body_bytes=1_000_000)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n" + COOKIE + b"\r\n" + b"z" * 90000)
        h.reactor.advance(4.9)
        h.balancer.sweep()
        self.assertEqual(h.client.value(), b"")
        h.reactor.advance(0.2)
        h.balancer.sweep()
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 408 "))

    def test_streamed_body_timeout_closes_both(self):
        """A large body streaming to a server that stalls closes the client and aborts the server connection."""
        h = Harness(self, body_timeout=5.0, retry_body_bytes=10)
        h.send(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n" + COOKIE + b"\r\n" + b"a" * 100)
        port, server, st = h.accept()
        self.assertTrue(st.value().endswith(b"a" * 100))
        h.reactor.advance(5.1)
        h.balancer.sweep()
        self.assertTrue(h.client.disconnecting)
        h.proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(st.disconnecting)

    def test_bare_lf_refused_at_once(self):
        """A request whose lines end with a bare LF gets 400 at once, not 408 after head_timeout."""
        for request in (b"GET / HTTP/1.1\nHost: x\n\n", b"GET / HTTP/1.1\r\nHost: x\n", b"GET / HTTP/1.1\n"):
            h = Harness(self)
            h.send(request)
            self.assertTrue(h.client.value().startswith(b"HTTP/1.1 400 "), request)
            self.assertTrue(h.client.disconnecting)

    def test_bare_cr_and_nul_refused_at_once(self):
        """A bare CR or a NUL in a head not yet complete is refused at once."""
        for request in (b"GET / HTTP/1.1\rHost: x", b"GET / HTTP/1.1\r\nX: \x00"):
            h = Harness(self)
            h.send(request)
            self.assertTrue(h.client.value().startswith(b"HTTP/1.1 400 "), request)

    def test_crlf_split_across_reads_is_fine(self):
        """A CR at the end of one read and its LF at the start of the next are one line end."""
        h = Harness(self)
        for piece in (b"GET / HTTP/1.1\r", b"\nHost: x\r", b"\n" + COOKIE + b"\r", b"\n"):
            h.send(piece)
        self.assertEqual(h.client.value(), b"")
        port, server, st = h.accept()
        self.assertTrue(st.value().startswith(b"GET / HTTP/1.1\r\nHost: x\r\n"))

    def test_head_end_split_across_reads(self):
        """A head whose blank line arrives a byte at a time is found as soon as it is complete."""
        h = Harness(self)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n"
        for i in range(len(request)):
            h.send(request[i : i + 1])
        port, server, st = h.accept()
        self.assertTrue(st.value().startswith(b"GET / HTTP/1.1\r\n"))

    def test_next_request_after_a_split_head(self):
        """After a head that came in pieces, the next request on the connection is read alone, with nothing of the first."""
        h = Harness(self)
        h.send(b"GET /1 HTTP/1.1\r\nHo")
        h.send(b"st: x\r\n" + COOKIE + b"\r\n")
        port, server, st = h.accept()
        st.clear()
        server.dataReceived(OK)
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n")
        self.assertTrue(st.value().startswith(b"GET /2 HTTP/1.1\r\n"))
        server.dataReceived(OK)
        self.assertEqual(h.client.value(), OK + OK)

    def test_many_blank_lines_before_a_request(self):
        """Blank lines before a request line are skipped however many there are."""
        h = Harness(self, max_header_bytes=1024)
        h.send(b"\r\n" * 20000 + b"GET /_appliance/lb-health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 200 OK"))


class InternalEndpointTests(SynchronousTestCase):
    """
    The servers' /_appliance/... endpoints are not public (issue 9, item 8).
    """

    def test_not_forwarded(self):
        """Targets under /_appliance (in any form) get 404 from the balancer and no server is asked."""
        for target in (
            b"/_appliance/health",
            b"/_appliance/health?x=1",
            b"/_appliance",
            b"/_appliance/",
            b"http://x/_appliance/health",
        ):
            h = Harness(self)
            h.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(h.client.value().startswith(b"HTTP/1.1 404 "), target)
            self.assertFalse(h.client.disconnecting)
            self.assertEqual(h.reactor.tcpClients, [])

    def test_lb_health_still_answered(self):
        """The balancer's own lb-health is answered, in origin and absolute form."""
        for target in (b"/_appliance/lb-health", b"/_appliance/lb-health?probe", b"http://lb/_appliance/lb-health"):
            h = Harness(self)
            h.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(h.client.value().endswith(b"\r\n\r\nok\n"), target)

    def test_forwarded_when_configured(self):
        """With forward_internal the servers' endpoints are proxied like any other path."""
        h = Harness(self, forward_internal=True)
        h.send(b"GET /_appliance/health HTTP/1.1\r\nHost: x\r\n\r\n")
        port, server, st = h.accept()
        self.assertTrue(st.value().startswith(b"GET /_appliance/health HTTP/1.1\r\n"))

    def test_body_closes_after_404(self):
        """A 404 to a request with a body (not read) closes the connection."""
        h = Harness(self)
        h.send(b"POST /_appliance/health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 404 "))
        self.assertTrue(h.client.disconnecting)


class FieldTests(SynchronousTestCase):
    """
    Header values and request targets (issue 9, item 9).
    """

    def test_control_characters_refused(self):
        """A header value holding a control character other than HTAB gets 400 and goes nowhere."""
        for ctl in list(range(0x01, 0x09)) + list(range(0x0B, 0x0D)) + list(range(0x0E, 0x20)) + [0x7F]:
            for extra in (b"", b"Connection: keep-alive\r\n"):
                h = Harness(self)
                h.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a" + bytes([ctl]) + b"b\r\n" + extra + b"\r\n")
                self.assertTrue(h.client.value().startswith(b"HTTP/1.1 400 "), (ctl, extra))
                self.assertEqual(h.reactor.tcpClients, [])

    def test_tab_and_obs_text_forwarded(self):
        """HTAB and bytes above 0x7F are allowed in header values and forwarded as they came."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\xe9\r\n" + COOKIE + b"\r\n")
        port, server, st = h.accept()
        self.assertIn(b"\r\nX-A: a\tb\xe9\r\n", st.value())

    def test_absolute_form(self):
        """An absolute-form target is forwarded in origin form, with its authority as the only Host."""
        h = Harness(self)
        h.send(b"GET http://example.test:8080/cart?x=1 HTTP/1.1\r\nHost: other\r\n" + COOKIE + b"\r\n")
        port, server, st = h.accept()
        sent = st.value()
        self.assertTrue(sent.startswith(b"GET /cart?x=1 HTTP/1.1\r\nHost: example.test:8080\r\n"))
        self.assertEqual(sent.lower().count(b"\r\nhost:"), 1)

    def test_other_targets_refused(self):
        """A target in neither origin nor absolute form (nor OPTIONS *) gets 400."""
        for line in (b"GET cart HTTP/1.1", b"GET * HTTP/1.1", b"GET http://user@h/ HTTP/1.1", b"CONNECT h:443 HTTP/1.1"):
            h = Harness(self)
            h.send(line + b"\r\nHost: x\r\n\r\n")
            self.assertTrue(h.client.value().startswith(b"HTTP/1.1 400 "), line)


class TwoCookieTests(SynchronousTestCase):
    """
    A request with two session cookies is routed by the first valid one,
    the rule the servers apply (issue 9, item 5).
    """

    def test_first_valid_cookie_routes(self):
        """A malformed session cookie before a valid one is skipped; of two valid ones the first routes."""
        for header, port in (
            (b"APPSESSION=junk; APPSESSION=" + SID.encode() + b"!s3!s1", 9003),
            (b"APPSESSION=" + SID.encode() + b"!s2!s1; APPSESSION=" + SID.encode() + b"!s3!s1", 9002),
        ):
            h = Harness(self)
            h.send(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + header + b"\r\n\r\n")
            self.assertEqual(h.pending_connect()[0], port)

    def test_cookie_lines_joined_in_order(self):
        """Session cookies in separate Cookie lines count in the order of the lines."""
        h = Harness(self)
        h.send(
            b"GET / HTTP/1.1\r\nHost: x\r\nCookie: APPSESSION=bad\r\nX: 1\r\n"
            b"Cookie: APPSESSION=" + SID.encode() + b"!s2!s1\r\nCookie: APPSESSION=" + SID.encode() + b"!s3!\r\n\r\n"
        )
        self.assertEqual(h.pending_connect()[0], 9002)


class NewSessionLimitTests(SynchronousTestCase):
    """
    The per-client limit on new sessions at the balancer (issue 9, item 10).
    """

    def connect(self, h: Harness, host: str = "10.1.2.3"):
        client = StringTransport(peerAddress=IPv4Address("TCP", host, 5555))
        proto = FrontendFactory(h.balancer, False).buildProtocol(None)
        proto.makeConnection(client)
        return proto, client

    def request(self, h: Harness, proto, client, data: bytes, answer: bytes) -> int:
        """
        Send C{data}; the server connection it went on (if any) answers
        C{answer}.  Returns the last status the client got.
        """
        before = len(h.reactor.tcpClients)
        sizes = [len(st.value()) for _, _, st in h.servers]
        proto.dataReceived(data)
        if len(h.reactor.tcpClients) > before:
            h.accept()
        for (port, server, st), size in zip(h.servers, sizes + [0]):
            if len(st.value()) > size:
                server.dataReceived(answer)
        return statuses(client.value())[-1]

    def new_session(self, h: Harness, host: str = "10.1.2.3", answer: bytes = SETS_COOKIE) -> int:
        """
        One cookie-less POST from C{host} on a connection of its own.
        """
        proto, client = self.connect(h, host)
        return self.request(h, proto, client, self.POST, answer)

    POST = b"POST /cart/items HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nitem"

    def sent_to_servers(self, h: Harness) -> int:
        return sum(len(st.value()) for _, _, st in h.servers)

    def test_over_the_burst_gets_429(self):
        """Past its burst, a client's request without a session cookie gets 429 with Retry-After, and no server sees it."""
        h = Harness(self, new_session_rate=2.0, new_session_burst=5)
        self.assertEqual([self.new_session(h) for _ in range(5)], [200] * 5)
        connections, sent = len(h.reactor.tcpClients), self.sent_to_servers(h)
        proto, client = self.connect(h)
        self.assertEqual(self.request(h, proto, client, self.POST, SETS_COOKIE), 429)
        self.assertIn(b"\r\nRetry-After: 1\r\n", client.value())
        self.assertEqual((len(h.reactor.tcpClients), self.sent_to_servers(h)), (connections, sent))

    def test_existing_sessions_unaffected(self):
        """A client over its limit still gets every request with a valid session cookie through."""
        h = Harness(self, new_session_rate=1.0, new_session_burst=2)
        for _ in range(2):
            self.new_session(h)
        self.assertEqual(self.new_session(h), 429)
        proto, client = self.connect(h)
        get = b"GET /cart HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n"
        self.assertEqual([self.request(h, proto, client, get, OK) for _ in range(5)], [200] * 5)

    def test_refills_at_the_rate(self):
        """A limited client may create one session per 1/rate seconds again."""
        h = Harness(self, new_session_rate=2.0, new_session_burst=3)
        for _ in range(3):
            self.new_session(h)
        self.assertEqual(self.new_session(h), 429)
        h.reactor.advance(0.5)
        self.assertEqual(self.new_session(h), 200)
        self.assertEqual(self.new_session(h), 429)

    def test_answers_without_a_session_do_not_count(self):
        """Requests without a cookie whose answers set none (static pages, say) are not new sessions."""
        h = Harness(self, new_session_rate=1.0, new_session_burst=2)
        self.assertEqual([self.new_session(h, answer=OK) for _ in range(20)], [200] * 20)

    def test_clients_limited_apart(self):
        """One client over its limit does not limit another."""
        h = Harness(self, new_session_rate=1.0, new_session_burst=2)
        for _ in range(2):
            self.new_session(h, "10.0.0.1")
        self.assertEqual(self.new_session(h, "10.0.0.1"), 429)
        self.assertEqual(self.new_session(h, "10.0.0.2"), 200)

    def test_off_with_rate_zero(self):
        """new_session_rate = 0 turns the limit off."""
        h = Harness(self, new_session_rate=0.0, new_session_burst=1)
        self.assertEqual([self.new_session(h) for _ in range(10)], [200] * 10)
        self.assertIsNone(h.balancer.new_sessions)

    def test_keep_alive_after_429(self):
        """A 429 to a request without a body keeps the connection; one with a body (unread) closes it."""
        h = Harness(self, new_session_rate=1.0, new_session_burst=1)
        self.new_session(h)
        proto, client = self.connect(h)
        self.assertEqual(self.request(h, proto, client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", OK), 429)
        self.assertFalse(client.disconnecting)
        self.assertEqual(self.request(h, proto, client, self.POST, OK), 429)
        self.assertTrue(client.disconnecting)
