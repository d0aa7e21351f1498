"""
Peer links in memory with a fake clock: login, heartbeats, a peer that goes
silent is cut, reconnection, call timeouts.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from appliance.replication import peer
from appliance.replication.link import PeerLink, PeerUnavailable

from .test_peer import make_node


class Net:
    """
    Connects a link to a node's PB server through iosim pumps.
    """

    def __init__(self):
        self.node, self.cluster = make_node("s2")
        self.server_factory = peer.server_factory(self.node, self.cluster.node_names, "test-secret-123", 10**7, Clock(), 5.0)
        self.pumps = []
        self.refuse = False

    def connect(self, factory):
        if self.refuse:
            from twisted.internet.error import ConnectionRefusedError

            return defer.fail(ConnectionRefusedError())
        server = self.server_factory.buildProtocol(None)
        client = factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False)
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self):
        for pump in self.pumps:
            pump.flush()


class LinkTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.net = Net()
        self.events = []
        self.link = PeerLink(
            self.clock, self.net.connect, "s1/5", "s2", "test-secret-123", heartbeat_interval=1.0, misses=3,
            call_timeout=2.0, on_up=lambda p: self.events.append(("up", p)), on_down=lambda p: self.events.append(("down", p)),
            on_beat=lambda p, answer, asked_at: self.events.append(("beat", p, tuple(answer), asked_at)),
            on_refused=lambda p: self.events.append(("refused", p)),
        )
        self.addCleanup(self.link.stop)

    def changes(self):
        return [e for e in self.events if e[0] != "beat"]

    def up(self):
        self.link.start()
        self.net.flush()
        self.assertTrue(self.link.connected)

    def test_login_reports_up(self):
        """A link logs in with the secret, reports the peer up and renews its lease at once."""
        self.up()
        self.assertEqual(self.events, [("up", "s2"), ("beat", "s2", (0, 0, 7), 0.0)])

    def test_heartbeat_reports_load(self):
        """Heartbeats renew the lease, timed from when they were asked, and carry the peer's session count back."""
        self.up()
        self.net.node.store.sessions["x"] = object()
        self.clock.advance(1.0)
        self.net.flush()
        self.assertEqual(self.link.load, 1)
        self.assertEqual(self.events[-1], ("beat", "s2", (0, 1, 7), 1.0))

    def test_refused_connection_reported(self):
        """A refused connection (nothing listens) is reported, as proof for a vote."""
        self.net.refuse = True
        self.link.start()
        self.assertEqual(self.events, [("refused", "s2")])

    def test_relogin_new_incarnation(self):
        """relogin drops the connection and logs in again at once under the new name."""
        self.up()
        self.link.relogin("s1/6")
        self.net.flush()
        self.assertTrue(self.link.connected)
        self.assertEqual(self.net.node.quorum.incarnation_of("s1"), 6)
        self.assertTrue(self.net.node.quorum.is_dead("s1", 5))
        self.assertEqual([e[0] for e in self.changes()], ["up", "down", "up"])

    def test_silent_peer_is_cut(self):
        """A peer that misses its heartbeats is cut and reported down."""
        self.up()
        for _ in range(3):
            self.clock.advance(1.0)
        self.assertTrue(self.link.connected)
        self.clock.advance(1.0)
        self.assertFalse(self.link.connected)
        self.assertEqual(self.changes(), [("up", "s2"), ("down", "s2")])

    def test_reconnects(self):
        """After a cut the link reconnects with backoff and comes up again."""
        self.up()
        self.net.refuse = True
        for _ in range(4):
            self.clock.advance(1.0)
        self.assertFalse(self.link.connected)
        self.clock.advance(0.1)
        self.assertFalse(self.link.connected)
        self.net.refuse = False
        self.clock.advance(0.2)
        self.net.flush()
        self.assertTrue(self.link.connected)
        self.assertEqual(self.changes(), [("up", "s2"), ("down", "s2"), ("refused", "s2"), ("up", "s2")])

    def test_call_when_down(self):
        """A call on a down link fails at once with PeerUnavailable."""
        self.failureResultOf(self.link.call("renew")).trap(PeerUnavailable)

    def test_call_timeout_cuts(self):
        """A call not answered in time fails and cuts the link, keeping calls ordered."""
        self.up()
        d = self.link.call("renew")
        self.clock.advance(2.0)
        self.failureResultOf(d).trap(PeerUnavailable)
        self.assertFalse(self.link.connected)

    def test_wrong_secret_never_up(self):
        """A link with the wrong secret never comes up and keeps retrying quietly."""
        self.link.secret = "not-the-secret"
        self.link.start()
        self.net.flush()
        self.assertFalse(self.link.connected)
        self.assertEqual(self.events, [])
        self.flushLoggedErrors()

    def test_failed_login_closes_the_connection(self):
        """A login refused by a peer that keeps the connection open, or never answered, is closed on this side: no connection is left behind at each retry."""
        from twisted.cred import checkers, portal
        from twisted.internet import protocol
        from twisted.spread import pb

        class Silent(protocol.Protocol):
            def dataReceived(self, data):
                pass

        keeps_open = pb.PBServerFactory(portal.Portal(
            peer.PeerRealm(self.net.node, self.net.cluster.node_names, 10**7),
            [checkers.InMemoryUsernamePasswordDatabaseDontUse(s1=b"another-secret")],
        ))
        for server_factory in (keeps_open, protocol.Factory.forProtocol(Silent)):
            self.net.server_factory = server_factory
            self.net.pumps = []
            link = PeerLink(self.clock, self.net.connect, "s1", "s2", "test-secret-123", heartbeat_interval=1.0,
                            misses=3, call_timeout=2.0, on_up=lambda p: None, on_down=lambda p: None)
            self.addCleanup(link.stop)
            link.start()
            for _ in range(50):
                self.net.flush()
                self.clock.advance(0.1)
            self.assertFalse(link.connected)
            self.assertGreater(len(self.net.pumps), 1)
            for pump in self.net.pumps[:-1]:
                self.assertTrue(pump.clientIO.disconnecting, server_factory)
            link.stop()
        self.flushLoggedErrors()
