"""
Unit tests for the proxy protocols with fake transports and a fake clock:
limits, timeouts, retries and routing, without any socket.
"""

from __future__ import annotations

from typing import List

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.balancer.frontend import FrontendFactory
from appliance.balancer.service import Balancer, sweep_interval
from appliance.config import Address, BalancerConfig, ClusterConfig, ClusterSettings, NodeConfig

SID = "AAAAAAAAAAAAAAAAAAAAAA"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def cluster(n: int = 3) -> ClusterConfig:
    nodes = tuple(
        NodeConfig(f"s{i}", Address("127.0.0.1", 9000 + i), Address("127.0.0.1", 9100 + i), f"m{i}", "r1")
        for i in range(1, n + 1)
    )
    return ClusterConfig("<test>", ClusterSettings("app.test", "secret-secret"), None, (), nodes, ())


def config(**kw) -> BalancerConfig:
    kw.setdefault("listen", Address("127.0.0.1", 8080))
    return BalancerConfig(name="lb", **kw)


class Harness:
    """
    A balancer on a memory reactor, one client connection, and the server
    connections it opens.
    """

    def __init__(self, test: SynchronousTestCase, **kw):
        self.reactor = MemoryReactorClock()
        self.balancer = Balancer(self.reactor, cluster(), config(**kw))
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
        self.proto = FrontendFactory(self.balancer, False).buildProtocol(None)
        self.proto.makeConnection(self.client)
        self.servers: List = []

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def pending_connect(self):
        """
        The last connection attempt: (node port, factory).
        """
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        return port, factory

    def accept(self):
        """
        Let the last connection attempt succeed; returns (port, protocol, transport).
        """
        port, factory = self.pending_connect()
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.servers.append((port, proto, transport))
        return port, proto, transport

    def refuse(self):
        port, factory = self.pending_connect()
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        return port


class FrontendTests(SynchronousTestCase):
    def test_forward_and_relay(self):
        """A GET is forwarded with forwarding headers and the answer relayed."""
        h = Harness(self)
        h.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        port, server, st = h.accept()
        self.assertTrue(st.value().startswith(b"GET /a HTTP/1.1\r\nHost: x\r\n"))
        self.assertIn(b"X-Forwarded-For: 10.1.2.3\r\n", st.value())
        server.dataReceived(OK)
        self.assertEqual(h.client.value(), OK)
        self.assertFalse(h.client.disconnecting)

    def test_connection_reused(self):
        """A second request reuses the pooled server connection."""
        h = Harness(self, policy="round_robin")
        cookie = b"Cookie: APPSESSION=" + SID.encode() + b"!s1!s2\r\n"
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + cookie + b"\r\n")
        port, server, st = h.accept()
        server.dataReceived(OK)
        st.clear()
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + cookie + b"\r\n")
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(st.value().startswith(b"GET /2 "))

    def test_cookie_routes_to_primary(self):
        """Plugin mode connects to the cookie's primary."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=b; APPSESSION=" + SID.encode() + b"!s3!s1\r\n\r\n")
        self.assertEqual(h.pending_connect()[0], 9003)

    def test_refused_primary_falls_back(self):
        """A refused primary marks it down and the secondary gets the request."""
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nCookie: APPSESSION=" + SID.encode() + b"!s2!s3\r\n\r\nabc")
        self.assertEqual(h.refuse(), 9002)
        self.assertFalse(h.balancer.nodes["s2"].available(h.reactor.seconds()))
        port, server, st = h.accept()
        self.assertEqual(port, 9003)
        self.assertTrue(st.value().endswith(b"\r\n\r\nabc"))

    def test_malformed_cookie_is_no_cookie(self):
        """A malformed cookie or one naming unknown nodes is placed by policy."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: APPSESSION=junk!s9!s8\r\n\r\n")
        self.assertIn(h.pending_connect()[0], (9001, 9002, 9003))

    def test_post_not_retried_after_send(self):
        """A POST whose server fails after receiving it gets 502 and goes nowhere else."""
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
        port, server, st = h.accept()
        server.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 502 "))

    def test_get_retried_after_send(self):
        """A GET whose server fails before answering is sent to the next server."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first, server, st = h.accept()
        server.dataReceived(b"HTTP/1.1 200")
        server.connectionLost(Failure(ConnectionLost()))
        second, server2, st2 = h.accept()
        self.assertNotEqual(first, second)
        server2.dataReceived(OK)
        self.assertEqual(h.client.value(), OK)

    def test_large_body_streamed_not_retried(self):
        """A PUT body larger than retry_body_bytes is streamed, so not retried."""
        h = Harness(self, retry_body_bytes=4)
        h.send(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456")
        port, server, st = h.accept()
        h.send(b"789")
        self.assertTrue(st.value().endswith(b"0123456789"))
        server.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 502 "))

    def test_partial_response_closes_client(self):
        """A server dying after part of its answer was relayed closes the client."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        port, server, st = h.accept()
        server.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        server.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(h.client.disconnecting)

    def test_response_backpressure(self):
        """While a long response is relayed, the client's transport can pause the server's."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        port, server, st = h.accept()
        server.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        self.assertIs(h.client.producer, server.throttle)
        h.client.producer.pauseProducing()
        self.assertEqual(st.producerState, "paused")
        server.dataReceived(b"def")
        self.assertIsNone(h.client.producer)
        self.assertEqual(st.producerState, "producing")

    def test_request_backpressure(self):
        """While a large body streams to a server, the server's transport can pause the client's."""
        h = Harness(self, retry_body_bytes=4)
        h.send(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456")
        port, server, st = h.accept()
        self.assertIs(st.producer, h.proto.throttle)
        st.producer.pauseProducing()
        self.assertEqual(h.client.producerState, "paused")
        h.send(b"789")
        self.assertIsNone(st.producer)
        self.assertEqual(h.client.producerState, "producing")

    def test_all_refused(self):
        """Every server refused: 503."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(3):
            h.refuse()
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 503 "))

    def test_pipelined(self):
        """Pipelined requests are answered in order, one at a time."""
        h = Harness(self)
        c = b"Cookie: APPSESSION=" + SID.encode() + b"!s1!\r\n"
        h.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n" + c + b"\r\nGET /2 HTTP/1.1\r\nHost: x\r\n" + c + b"\r\n")
        port, server, st = h.accept()
        self.assertNotIn(b"GET /2", st.value())
        server.dataReceived(OK)
        self.assertIn(b"GET /2", st.value())

    def test_pipelined_post_then_get(self):
        """A body held for one request is not sent again with the next one on the connection."""
        h = Harness(self)
        c = b"Cookie: APPSESSION=" + SID.encode() + b"!s1!\r\n"
        h.send(
            b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n" + c + b"\r\nabc"
            b"GET /2 HTTP/1.1\r\nHost: x\r\n" + c + b"\r\n"
        )
        port, server, st = h.accept()
        self.assertTrue(st.value().endswith(b"\r\n\r\nabc"))
        st.clear()
        server.dataReceived(OK)
        self.assertTrue(st.value().startswith(b"GET /2 "))
        self.assertTrue(st.value().endswith(b"\r\n\r\n"))
        server.dataReceived(OK)
        self.assertEqual(h.client.value(), OK + OK)

    def test_chunked_request(self):
        """A chunked body is relayed as it came, then the next request is read."""
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertEqual(h.reactor.tcpClients, [])
        h.send(b"0\r\n\r\n")
        port, server, st = h.accept()
        self.assertTrue(st.value().endswith(b"Transfer-Encoding: chunked\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nForwarded: for=10.1.2.3;proto=http\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))

    def test_chunked_response(self):
        """A chunked response is relayed until its last chunk, and the connection pooled."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        port, server, st = h.accept()
        server.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        server.dataReceived(b"0\r\n\r\n")
        self.assertTrue(h.client.value().endswith(b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"))
        self.assertEqual(h.balancer.pool.idle["s" + str(port - 9000)], [server])

    def test_sticky_learns(self):
        """Sticky mode learns the server from Set-Cookie and sends the cookie back there."""
        h = Harness(self, mode="sticky")
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        port, server, st = h.accept()
        value = SID.encode() + b"!s3!s1"
        server.dataReceived(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: APPSESSION=" + value + b"; Path=/\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(h.balancer.sticky_table.lookup(value, h.reactor.seconds()), f"s{port - 9000}")
        for _ in range(3):
            self.assertEqual(h.balancer.plan(_head(b"Cookie: APPSESSION=" + value))[0][0], f"s{port - 9000}")

    def test_expect_continue(self):
        """A client waiting for 100 Continue gets it from the balancer before sending its body."""
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(h.client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        h.send(b"abc")
        port, server, st = h.accept()
        self.assertTrue(st.value().endswith(b"\r\n\r\nabc"))

    def test_session_cache_bounded(self):
        """Cookie readings are kept only for short headers, and never more than a bounded number."""
        h = Harness(self)
        for i in range(12_000):
            h.balancer.session(b"APPSESSION=%d!s1!" % i)
        long_header = b"APPSESSION=" + SID.encode() + b"!s1!; x=" + b"x" * 5000
        self.assertEqual(h.balancer.session(long_header)[1].primary, "s1")
        self.assertLessEqual(len(h.balancer.kept_sessions), 10_000)
        self.assertNotIn(long_header, h.balancer.kept_sessions)

    def test_lb_health(self):
        """/_appliance/lb-health is answered locally."""
        h = Harness(self)
        h.send(b"GET /_appliance/lb-health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(h.client.value().endswith(b"\r\n\r\nok\n"))
        self.assertEqual(h.reactor.tcpClients, [])

    def test_redirect_https(self):
        """With redirect_https a plain request is sent to the https address."""
        h = Harness(
            self, https=Address("127.0.0.1", 8443), tls_cert="c", tls_key="k", redirect_https=True
        )
        h.send(b"GET /p?q HTTP/1.1\r\nHost: example:8080\r\n\r\n")
        self.assertIn(b"Location: https://example:8443/p?q\r\n", h.client.value())


class SendNowTests(SynchronousTestCase):
    def test_not_tcp_goes_through_write(self):
        """Anything but a plain TCP transport (a TLS wrapper, a fake) is written the ordinary way."""
        from appliance.balancer.flow import send_now

        class Wrapper(StringTransport):
            socket = object()  # a TLS wrapper forwards attribute lookups to the raw socket

        t = Wrapper()
        send_now(t, b"data")
        self.assertEqual(t.value(), b"data")


def _head(*lines: bytes):
    from appliance.balancer.framing import Limits, parse_request_head

    return parse_request_head(b"\r\n".join((b"GET / HTTP/1.1", b"Host: x") + lines), Limits(), b"1.1.1.1", False)


class LimitTests(SynchronousTestCase):
    def test_head_too_large(self):
        """A head over max_header_bytes gets 431 without waiting for its end."""
        h = Harness(self, max_header_bytes=1024)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(h.client.disconnecting)

    def test_malformed(self):
        """A malformed request line gets 400."""
        h = Harness(self)
        h.send(b"HELLO\r\n\r\n")
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 400 "))

    def test_chunked_too_large(self):
        """A chunked body that grows past max_body_bytes gets 413."""
        h = Harness(self, max_body_bytes=10)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n")
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 413 "))

    def test_head_timeout(self):
        """A client that does not finish its head within head_timeout gets 408."""
        h = Harness(self, head_timeout=5.0)
        h.send(b"GET / HTTP/1.1\r\n")
        h.reactor.advance(4.0)
        h.balancer.sweep()
        self.assertEqual(h.client.value(), b"")
        h.reactor.advance(1.5)
        h.balancer.sweep()
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 408 "))

    def test_one_answer_per_refusal(self):
        """A refused client is not also sent 408 when its old deadline passes."""
        h = Harness(self, head_timeout=5.0, max_header_bytes=1024)
        h.send(b"GET / HTTP/1.1\r\n")
        h.send(b"X: " + b"a" * 2000)
        h.reactor.advance(6.0)
        h.balancer.sweep()
        self.assertEqual(h.client.value().count(b"HTTP/1.1 "), 1)

    def test_idle_timeout(self):
        """A keep-alive connection idle since its last answer is closed after idle_timeout, without a word."""
        h = Harness(self, idle_timeout=30.0, head_timeout=5.0)
        h.send(b"GET /_appliance/lb-health HTTP/1.1\r\nHost: x\r\n\r\n")
        h.client.clear()
        h.reactor.advance(29.0)
        h.balancer.sweep()
        self.assertFalse(h.client.disconnecting)
        h.reactor.advance(1.0)
        h.balancer.sweep()
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.client.value(), b"")

    def test_silent_connection_gets_head_timeout(self):
        """A new connection that never sends a byte is closed after head_timeout, not kept for idle_timeout."""
        h = Harness(self, idle_timeout=60.0, head_timeout=5.0)
        h.reactor.advance(4.9)
        h.balancer.sweep()
        self.assertFalse(h.client.disconnecting)
        h.reactor.advance(0.2)
        h.balancer.sweep()
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.client.value(), b"")

    def test_first_head_timed_from_connection(self):
        """A new connection's first head must be complete within head_timeout of connecting, not of its first byte."""
        h = Harness(self, head_timeout=5.0)
        h.reactor.advance(4.0)
        h.send(b"GET / HTTP/1.1\r\n")
        h.reactor.advance(1.5)
        h.balancer.sweep()
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 408 "))

    def test_response_timeout(self):
        """A server that does not answer within response_timeout is aborted; the GET tries the next."""
        h = Harness(self, response_timeout=2.0)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        port, server, st = h.accept()
        h.reactor.advance(2.5)
        h.balancer.pool.sweep(h.reactor.seconds())
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_sweep_interval(self):
        """Deadlines are checked often enough for the shortest timeout."""
        self.assertEqual(sweep_interval(config(head_timeout=0.2)), 0.05)
        self.assertEqual(sweep_interval(config()), 1.0)


class ReuseTests(SynchronousTestCase):
    """
    Pooled connections and the race with a server closing an idle one
    (HAProxy's "http-reuse safe").
    """

    COOKIE = b"Cookie: APPSESSION=" + SID.encode() + b"!s1!s2\r\n"

    def pooled(self, **kw):
        """
        A harness whose one request to s1 left a connection in the pool.
        """
        h = Harness(self, **kw)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        port, server, st = h.accept()
        server.dataReceived(OK)
        st.clear()
        h.client.clear()
        return h, server, st

    def test_post_not_sent_on_connection_idle_too_long(self):
        """A POST does not go on a connection idle longer than the safe threshold: a new one is opened."""
        from appliance.balancer.backend import SAFE_REUSE_IDLE

        h, server, st = self.pooled()
        h.reactor.advance(SAFE_REUSE_IDLE + 0.5)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n" + self.COOKIE + b"\r\nz")
        self.assertEqual(st.value(), b"")
        self.assertEqual(len(h.reactor.tcpClients), 2)
        port, server2, st2 = h.accept()
        self.assertEqual(port, 9001)
        self.assertTrue(st2.value().startswith(b"POST / "))

    def test_post_sent_on_recent_connection(self):
        """A POST goes on a connection that finished an exchange moments ago."""
        h, server, st = self.pooled()
        h.reactor.advance(0.1)
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n" + self.COOKIE + b"\r\nz")
        self.assertTrue(st.value().startswith(b"POST / "))
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_get_sent_on_older_connection(self):
        """An idempotent request still reuses a connection idle for a while."""
        from appliance.balancer.backend import SAFE_REUSE_IDLE

        h, server, st = self.pooled()
        h.reactor.advance(SAFE_REUSE_IDLE + 5)
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        self.assertTrue(st.value().startswith(b"GET /2 "))
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_expired_idle_connection_not_used(self):
        """A pooled connection past its idle lifetime is closed rather than used, even before the sweep."""
        from appliance.balancer.backend import POOL_IDLE_TIME

        h, server, st = self.pooled()
        h.reactor.advance(POOL_IDLE_TIME + 0.1)
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        self.assertEqual(st.value(), b"")
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_pool_idle_shorter_than_server_keep_alive(self):
        """Pooled connections are dropped well before twisted.web's idle timeout closes them."""
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        from appliance.balancer.backend import POOL_IDLE_TIME

        site = Site(Resource(), reactor=MemoryReactorClock())
        self.assertLess(POOL_IDLE_TIME + sweep_interval(config()), site.timeOut / 2)

    def test_stale_connection_retried_on_new_connection(self):
        """A GET whose pooled connection closes without a byte is sent again to the same server, on a new connection."""
        h, server, st = self.pooled()
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(h.reactor.tcpClients), 2)
        port, server2, st2 = h.accept()
        self.assertEqual(port, 9001)
        self.assertTrue(st2.value().startswith(b"GET /2 "))
        server2.dataReceived(OK)
        self.assertEqual(h.client.value(), OK)
        self.assertTrue(h.balancer.nodes["s1"].available(h.reactor.seconds()))

    def test_stale_retry_only_once(self):
        """When the new connection fails too, the usual rule applies: the next server."""
        h, server, st = self.pooled()
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        server.connectionLost(Failure(ConnectionDone()))
        port, server2, st2 = h.accept()
        server2.connectionLost(Failure(ConnectionDone()))
        port, server3, st3 = h.accept()
        self.assertEqual(port, 9002)

    def test_partial_answer_on_pooled_connection_not_stale(self):
        """A pooled connection that failed after part of an answer is not retried on the same server."""
        h, server, st = self.pooled()
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        server.dataReceived(b"HTTP/1.1 200")
        server.connectionLost(Failure(ConnectionLost()))
        port, server2, st2 = h.accept()
        self.assertEqual(port, 9002)

    def test_post_on_stale_connection_not_retried(self):
        """A POST that met a closing pooled connection is still not sent again: 502."""
        h, server, st = self.pooled()
        h.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n" + self.COOKIE + b"\r\nz")
        self.assertTrue(st.value().startswith(b"POST / "))
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 502 "))

    def test_timeout_on_pooled_connection_goes_to_next(self):
        """A pooled connection that timed out is not a stale one: the GET goes to the next server."""
        h, server, st = self.pooled(response_timeout=2.0)
        h.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        h.reactor.advance(2.5)
        h.balancer.pool.sweep(h.reactor.seconds())
        server.connectionLost(Failure(ConnectionDone()))
        port, server2, st2 = h.accept()
        self.assertEqual(port, 9002)

    def test_parked_connection_counts_as_pooled(self):
        """A connection parked in the pool unused (its client left) is treated as pooled when it fails empty."""
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        h.proto.connectionLost(Failure(ConnectionDone()))
        port, parked, st = h.accept()
        self.assertEqual(h.balancer.pool.idle["s1"], [parked])
        client2 = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.4", 5556))
        proto2 = FrontendFactory(h.balancer, False).buildProtocol(None)
        proto2.makeConnection(client2)
        proto2.dataReceived(b"GET /2 HTTP/1.1\r\nHost: x\r\n" + self.COOKIE + b"\r\n")
        self.assertTrue(st.value().startswith(b"GET /2 "))
        parked.connectionLost(Failure(ConnectionDone()))
        port, fresh, st2 = h.accept()
        self.assertEqual(port, 9001)
        self.assertTrue(st2.value().startswith(b"GET /2 "))
