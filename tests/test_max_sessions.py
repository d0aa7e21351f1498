"""
max_sessions: a node that is primary of that many sessions refuses to
create another (503 with Retry-After over HTTP) while its sessions go on.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance import cookie
from appliance.config import ClusterConfig
from appliance.core.session import Full
from appliance.server.node import SessionNode, TooManySessions

from .helpers import cluster_ini, quorum_for
from .memory_http import exchange, request, responses
from .test_hosting_edges import inline_config, memory_site

NO_COOKIE = cookie.Route(None, None, None)
FORM = ("Content-Type: application/x-www-form-urlencoded",)


class NodeCapTests(SynchronousTestCase):
    def setUp(self):
        text, _ = cluster_ini(names=("s1",), extra="max_sessions = 3")
        self.clock = Clock()
        cluster = ClusterConfig.from_string(text)
        self.node = SessionNode(
            self.clock, cluster, "s1", self.clock.seconds, call=None,
            connected=lambda p: False, peer_load=lambda p: 0, send=None,
            quorum=quorum_for(self.clock, cluster, "s1", self.clock.seconds),
        )

    def write(self, route=NO_COOKIE, value="x"):
        """
        One request that stores C{value}; the committed session's route, or
        the failure.
        """
        handle = self.successResultOf(self.node.open(route))
        handle.data["v"] = value
        d = self.node.close(handle)
        result = []
        d.addBoth(result.append)
        (outcome,) = result
        if isinstance(outcome, Failure):
            return outcome
        return cookie.Route(handle.session.sid, "s1", None)

    def test_default(self):
        """Without the key a node may hold 100,000 sessions as primary."""
        text, _ = cluster_ini(names=("s1",))
        self.assertEqual(ClusterConfig.from_string(text).cluster.max_sessions, 100_000)

    def test_full_node_refuses_new_sessions_only(self):
        """At max_sessions a write without a session fails with TooManySessions; existing sessions read and write on."""
        routes = [self.write() for _ in range(3)]
        refused = self.write()
        refused.trap(TooManySessions)
        self.assertEqual(len(self.node.store), 3)
        self.assertEqual(self.write(routes[0], "y"), routes[0])
        self.assertEqual(self.node.store.get(routes[0].sid).version, 2)
        read = self.successResultOf(self.node.open(NO_COOKIE))
        self.successResultOf(self.node.close(read))

    def test_room_again_when_a_session_ends(self):
        """A session that ends makes room for a new one."""
        routes = [self.write() for _ in range(3)]
        handle = self.successResultOf(self.node.open(routes[1]))
        handle.data.invalidate()
        self.successResultOf(self.node.close(handle))
        self.assertIsInstance(self.write(), cookie.Route)
        self.write().trap(TooManySessions)

    def test_backups_do_not_count(self):
        """Only primaries count: a node full of backups for others still creates its own sessions."""
        for i in range(5):
            self.node.store.apply(Full(chr(65 + i) * 22, 1, 1, "s2", "s1", 60.0, 0.0, {}), 0.0)
        for _ in range(3):
            self.assertIsInstance(self.write(), cookie.Route)
        self.write().trap(TooManySessions)

    def test_handed_over_primary_makes_room_at_once(self):
        """A primary handed over to another node stops counting at once: the count is kept, never recounted."""
        routes = [self.write() for _ in range(3)]
        self.node.store.apply(Full("B" * 22, 1, 1, "s2", "s1", 60.0, 0.0, {}), 0.0)
        self.write().trap(TooManySessions)
        self.node.store.hand_over(routes[0].sid, "s2", self.clock.seconds())
        self.assertIsInstance(self.write(), cookie.Route)
        self.write().trap(TooManySessions)


class SweepTests(SynchronousTestCase):
    def test_a_large_sweep_goes_on_in_the_next_turn(self):
        """Expiry removes at most a slice of due sessions per reactor turn and goes on by itself in the next turn until none is due."""
        text, _ = cluster_ini(names=("s1",), extra="session_timeout = 10s")
        clock = Clock()
        cluster = ClusterConfig.from_string(text)
        node = SessionNode(
            clock, cluster, "s1", clock.seconds, call=None,
            connected=lambda p: False, peer_load=lambda p: 0, send=None,
            quorum=quorum_for(clock, cluster, "s1", clock.seconds),
        )
        node.sweep = 4
        for i in range(10):
            node.store.apply(Full("%022d" % i, 1, 1, "s2", "s1", 10.0, 0.0, {}), 0.0)
        clock.advance(11)
        self.assertEqual(len(node.expire()), 4)
        self.assertEqual(len(node.store), 6)
        clock.advance(0)
        clock.advance(0)
        self.assertEqual(len(node.store), 0)
        self.assertFalse(node.store.expiry_due(clock.seconds()))


class HttpCapTests(SynchronousTestCase):
    def test_503_with_retry_after(self):
        """Over HTTP a full node answers a would-be new session 503 with Retry-After; the existing one goes on."""
        site, node = memory_site(inline_config(cluster_extra="max_sessions = 1"), MemoryReactorClock())
        ((code, headers, _),) = responses(exchange(site, request("POST", "/cart/items", b"item=a", FORM)))
        self.assertEqual(code, 200)
        mine = headers[b"set-cookie"][0].split(b";")[0].decode()
        ((code, headers, body),) = responses(exchange(site, request("POST", "/cart/items", b"item=b", FORM)))
        self.assertEqual((code, headers[b"retry-after"]), (503, [b"10"]))
        self.assertNotIn(b"set-cookie", headers)
        self.assertEqual(len(node.store), 1)
        ((code, _, body),) = responses(
            exchange(site, request("POST", "/cart/items", b"item=c", FORM + (f"Cookie: {mine}",)))
        )
        self.assertEqual((code, body), (200, b'["a", "c"]'))
        ((code, _, body),) = responses(exchange(site, request("GET", "/cart")))
        self.assertEqual((code, body), (200, b'{"items": []}'))
