"""
The states of one request exchange (L{appliance.balancer.exchange}), driven
through a client connection and server connections on fake transports.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.balancer.exchange import BODY, CONNECTING, DONE, FAILED, RESPONDING, SENT
from appliance.balancer.response import parse_response_head

from .test_balancer_proxy import OK, SID, Harness

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 06:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
)


class StateTests(SynchronousTestCase):
    def sent_get(self):
        """
        A GET sent on a new server connection: the harness, the exchange
        and the server's protocol.
        """
        h = Harness(self)
        h.send(GET)
        ex = h.proto.exchange
        _, server, _ = h.accept()
        return h, ex, server

    def test_get_connecting_sent_done(self):
        """A GET waits for a connection, is sent, and is done once answered whole."""
        h = Harness(self)
        h.send(GET)
        ex = h.proto.exchange
        self.assertEqual(ex.state, CONNECTING)
        _, server, wire = h.accept()
        self.assertEqual(ex.state, SENT)
        self.assertTrue(wire.value().startswith(b"GET /a HTTP/1.1\r\n"))
        server.dataReceived(OK)
        self.assertEqual(ex.state, DONE)
        self.assertIsNone(h.proto.exchange)
        self.assertIsNone(server.exchange)
        self.assertEqual(h.client.value(), OK)

    def test_responding_until_the_body_is_through(self):
        """An answer in two reads: RESPONDING after its head, DONE after its body."""
        h, ex, server = self.sent_get()
        server.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        self.assertEqual(ex.state, RESPONDING)
        server.dataReceived(b"cd")
        self.assertEqual(ex.state, DONE)
        self.assertTrue(h.client.value().endswith(b"\r\n\r\nabcd"))

    def test_body_held_until_complete(self):
        """A POST body that comes in pieces keeps the exchange in BODY until it is whole."""
        h = Harness(self)
        h.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
        ex = h.proto.exchange
        self.assertEqual(ex.state, BODY)
        self.assertEqual(len(h.reactor.tcpClients), 0)
        h.send(b"def")
        self.assertEqual(ex.state, CONNECTING)
        _, _, wire = h.accept()
        self.assertTrue(wire.value().endswith(b"\r\n\r\nabcdef"))

    def test_large_body_streamed_once_connected(self):
        """A body over retry_body_bytes is sent as soon as a server is connected, the rest streamed."""
        h = Harness(self, retry_body_bytes=4)
        h.send(b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcdef")
        ex = h.proto.exchange
        self.assertEqual(ex.state, CONNECTING)
        self.assertFalse(ex.replayable)
        _, _, wire = h.accept()
        self.assertEqual(ex.state, SENT)
        self.assertTrue(ex.streaming)
        h.send(b"ghij")
        self.assertTrue(wire.value().endswith(b"\r\n\r\nabcdefghij"))
        self.assertFalse(ex.streaming)

    def test_refused_then_next_server(self):
        """A refused connection sends the exchange back to CONNECTING, to the next server."""
        h = Harness(self)
        h.send(GET)
        ex = h.proto.exchange
        first = h.refuse()
        self.assertEqual(ex.state, CONNECTING)
        self.assertEqual(ex.attempt, 2)
        port, _, _ = h.accept()
        self.assertNotEqual(port, first)
        self.assertEqual(ex.state, SENT)

    def test_every_server_refused(self):
        """When every server refuses, the exchange FAILED and the client has 503."""
        h = Harness(self)
        h.send(GET)
        ex = h.proto.exchange
        for _ in range(3):
            h.refuse()
        self.assertEqual(ex.state, FAILED)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(h.client.disconnecting)

    def test_declined_post_goes_to_the_next_server(self):
        """A POST answered Appliance-Not-Served is sent again, body and all, to the next server."""
        h = Harness(self)
        h.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        ex = h.proto.exchange
        first, server, _ = h.accept()
        server.dataReceived(b"HTTP/1.1 503 No\r\nAppliance-Not-Served: 1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(ex.state, CONNECTING)
        port, _, wire = h.accept()
        self.assertNotEqual(port, first)
        self.assertTrue(wire.value().endswith(b"\r\n\r\nabc"))
        self.assertEqual(h.client.value(), b"")

    def test_failure_mid_response_fails_the_exchange(self):
        """A server lost after part of the answer was relayed fails the exchange and closes the client."""
        h, ex, server = self.sent_get()
        server.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")
        server.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(ex.state, FAILED)
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_client_lost_while_connecting(self):
        """A client gone while its exchange waits for a connection: FAILED, and the connection is pooled."""
        h = Harness(self)
        h.send(GET)
        ex = h.proto.exchange
        h.proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(ex.state, FAILED)
        _, server, wire = h.accept()
        self.assertEqual(wire.value(), b"")
        self.assertIn(server, h.balancer.pool.idle[server.node])

    def test_new_exchange_per_request(self):
        """Two requests on one connection are two exchanges, the server connection reused."""
        h = Harness(self)
        get = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: APPSESSION=" + SID.encode() + b"!s1!s2\r\n\r\n"
        h.send(get)
        first = h.proto.exchange
        _, server, wire = h.accept()
        server.dataReceived(OK)
        h.send(get)
        second = h.proto.exchange
        self.assertIsNot(first, second)
        self.assertEqual(second.state, SENT)
        self.assertEqual(len(h.reactor.tcpClients), 1)


class KeepAliveAnswerTests(SynchronousTestCase):
    def test_nginx_answer_relayed_without_connection(self):
        """An answer with Connection: keep-alive is relayed whole without that line, the connection reused."""
        h = Harness(self)
        h.send(GET)
        _, server, _ = h.accept()
        server.dataReceived(NGINX)
        self.assertEqual(h.client.value(), NGINX.replace(b"\r\nConnection: keep-alive", b""))
        self.assertIn(server, h.balancer.pool.idle[server.node])

    def test_same_as_the_full_reading(self):
        """The quick reading of a keep-alive head gives what the line-by-line reading gives."""
        heads = [
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nconnection:  Keep-Alive ",
            b"HTTP/1.1 404 Not Found\r\nServer: x\r\nContent-Length: 0\r\nConnection: keep-alive\r\nX: y",
        ]
        for head in heads:
            quick = parse_response_head(head, b"GET", None, False, True)
            # A cookie name sends the head through the line-by-line reading.
            full = parse_response_head(head, b"GET", b"NOPE", False, True)
            self.assertEqual(quick, full, head)
            self.assertNotIn(b"onnection", quick.relay.lower())

    def test_other_connection_tokens_read_in_full(self):
        """Connection: close, or keep-alive beside another hop-by-hop line, is read in full."""
        close = parse_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2", b"GET", None, False, True
        )
        self.assertFalse(close.reusable)
        both = parse_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2",
            b"GET", None, False, True,
        )
        self.assertNotIn(b"keep-alive", both.relay.lower())
        self.assertTrue(both.reusable)
