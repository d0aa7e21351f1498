"""
Witness balancers: the leases and votes they give (in memory, fake clock),
and what the balancer does with a server the witness finds silent or a
server that says it did not serve a request.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import UserError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.core.membership import Renewal
from appliance.replication.peer import Refused
from appliance.replication.witness import Witness, WitnessAvatar

from .test_balancer_proxy import OK, SID, Harness

NOT_SERVED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Appliance-Not-Served: 1\r\nContent-Length: 2\r\n\r\n{}"
)


class WitnessTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.events = []
        self.refused = set()
        self.witness = Witness(
            ("s1", "s2", "s3"), 1.5, 0.25, self.clock.seconds,
            lambda server: defer.succeed(server in self.refused),
            on_silent=lambda s: self.events.append(("silent", s)),
            on_heard=lambda s: self.events.append(("heard", s)),
        )
        self.clock.advance(2.0)

    def test_grants_and_reports_silence(self):
        """The witness grants leases; a server that stops renewing is reported silent once, heard again when it renews."""
        avatar = WitnessAvatar("s1", 5, self.witness)
        self.assertEqual(avatar.perspective_renew(), (int(Renewal.GRANTED), 0, 0))
        self.clock.advance(1.0)
        self.witness.check()
        self.assertEqual(self.events, [])
        self.clock.advance(0.5)
        self.witness.check()
        self.witness.check()
        self.assertEqual(self.events, [("silent", "s1")])
        avatar.perspective_renew()
        self.assertEqual(self.events, [("silent", "s1"), ("heard", "s1")])

    def test_vote_waits_for_the_promise_unless_refused(self):
        """A vote is no while the grant binds, unless the server's port refuses connections; then yes for good."""
        WitnessAvatar("s1", 5, self.witness).perspective_renew()
        avatar = WitnessAvatar("s2", 9, self.witness)
        self.assertIs(self.successResultOf(avatar.perspective_vote("s1", 5)), False)
        self.refused.add("s1")
        self.assertIs(self.successResultOf(avatar.perspective_vote("s1", 5)), True)
        self.refused.clear()
        self.assertIs(self.successResultOf(avatar.perspective_vote("s1", 5)), True)
        self.assertEqual(WitnessAvatar("s1", 5, self.witness).perspective_renew()[0], int(Renewal.DEAD))

    def test_malformed_vote_refused(self):
        """Votes on unknown servers or malformed incarnations are refused."""
        avatar = WitnessAvatar("s2", 9, self.witness)
        for args in (("lb1", 1), ("s1", -2), ("s1", 1.5), ("s1", "5")):
            self.assertRaises(Refused, avatar.perspective_vote, *args)


def cookie_header(primary="s1", secondary="s2") -> bytes:
    return b"Cookie: APPSESSION=" + f"{SID}!{primary}!{secondary}".encode() + b"\r\n"


class SilentServerTests(SynchronousTestCase):
    def test_get_in_flight_resent_to_secondary(self):
        """A GET waiting on a server found silent goes to the session's secondary at once, not after the response timeout."""
        h = Harness(self)
        h.send(b"GET /cart HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"\r\n")
        port, server, st = h.accept()
        self.assertEqual(port, 9001)
        h.balancer.server_silent("s1")
        port, server, st = h.accept()
        self.assertEqual(port, 9002)
        server.dataReceived(OK)
        self.assertTrue(h.client.value().endswith(b"ok"))

    def test_pooled_get_not_retried_on_the_silent_server(self):
        """A GET on a pooled connection to a server found silent goes to the next server, not again to the silent one."""
        h = Harness(self)
        get = b"GET /cart HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"\r\n"
        h.send(get)
        port, server, st = h.accept()
        server.dataReceived(OK)
        h.send(get)
        self.assertEqual(len(h.reactor.tcpClients), 1)
        h.balancer.server_silent("s1")
        self.assertEqual(h.pending_connect()[0], 9002)

    def test_post_in_flight_answered_at_once(self):
        """A POST waiting on a server found silent is answered 502 at once (it may have been applied): never sent twice."""
        h = Harness(self)
        h.send(b"POST /cart/items HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"Content-Length: 6\r\n\r\nitem=a")
        h.accept()
        attempts = len(h.reactor.tcpClients)
        h.balancer.server_silent("s1")
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 502"))
        self.assertEqual(len(h.reactor.tcpClients), attempts)

    def test_connection_attempt_abandoned(self):
        """A connection attempt to a server found silent is given up and the next server tried."""
        h = Harness(self)
        h.send(b"GET /cart HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"\r\n")
        self.assertEqual(h.pending_connect()[0], 9001)
        port, factory = h.pending_connect()
        connector = list(h.balancer.pool.connecting)[-1]
        h.balancer.server_silent("s1")
        self.assertTrue(connector.stoppedConnecting)
        # What the reactor does with an attempt told to stop:
        factory.clientConnectionFailed(connector, Failure(UserError()))
        self.assertEqual(h.pending_connect()[0], 9002)

    def test_silent_server_skipped_until_heard(self):
        """New requests skip a silent server until the witness hears it again."""
        h = Harness(self)
        h.balancer.server_silent("s1")
        h.send(b"GET /cart HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"\r\n")
        self.assertEqual(h.pending_connect()[0], 9002)
        h.balancer.server_heard("s1")
        self.assertTrue(h.balancer.nodes["s1"].available(h.reactor.seconds()))

    def test_silent_server_never_tried_last(self):
        """When every other server declines, the request is answered rather than sent to the silent server."""
        h = Harness(self)
        h.balancer.server_silent("s1")
        h.send(b"GET /cart HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"\r\n")
        for expected in (9002, 9003):
            port, server, st = h.accept()
            self.assertEqual(port, expected)
            server.dataReceived(NOT_SERVED)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 503"))


class NotServedTests(SynchronousTestCase):
    def test_post_not_served_goes_to_next_server(self):
        """A 503 marked 'not served' means nothing was done: even a POST is sent to the next server."""
        h = Harness(self)
        h.send(b"POST /cart/items HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"Content-Length: 6\r\n\r\nitem=a")
        port, server, st = h.accept()
        server.dataReceived(NOT_SERVED)
        self.assertEqual(h.client.value(), b"")
        port, server, st = h.accept()
        self.assertEqual(port, 9002)
        self.assertTrue(st.value().endswith(b"item=a"))
        server.dataReceived(OK)
        self.assertTrue(h.client.value().endswith(b"ok"))

    def test_plain_503_relayed(self):
        """A 503 without the mark is the server's answer: relayed, a POST not resent."""
        h = Harness(self)
        h.send(b"POST /cart/items HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"Content-Length: 6\r\n\r\nitem=a")
        port, server, st = h.accept()
        plain = NOT_SERVED.replace(b"Appliance-Not-Served: 1\r\n", b"")
        server.dataReceived(plain)
        self.assertEqual(h.client.value(), plain)

    def test_every_server_declines(self):
        """When every server declines, the client gets 503."""
        h = Harness(self)
        h.send(b"GET /cart HTTP/1.1\r\nHost: x\r\n" + cookie_header() + b"\r\n")
        for _ in range(3):
            port, server, st = h.accept()
            server.dataReceived(NOT_SERVED)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 503"))
