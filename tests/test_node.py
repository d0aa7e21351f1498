"""
A session server's request path, failover and takeover, on a simulated
cluster: real SessionNodes and replicators, PB replaced by direct calls
through the same validating edge, a fake clock.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appliance import cookie
from appliance.config import ClusterConfig
from appliance.core.store import Fenced, TooLarge
from appliance.replication.link import PeerUnavailable
from appliance.replication.peer import PeerAvatar
from appliance.replication.replicator import Replicator
from appliance.server.node import SessionNode

from .helpers import cluster_ini


class Cluster:
    """
    s1 (m1, r1), s2 (m2, r1), s3 (m3, r2); C{down} holds nodes that are dead.
    """

    def __init__(self, replication="sync", extra=""):
        text, _ = cluster_ini(replication=replication, extra=extra)
        self.config = ClusterConfig.from_string(text)
        self.clock = Clock()
        self.down = set()
        self.cut = set()  # (a, b): a's link to b is down (a partition, not a death)
        self.nodes = {}
        self.replicators = {}
        for name in self.config.node_names:
            self.add(name)

    def add(self, name):
        def call(peer, method, *args, _me=name):
            if peer in self.down or _me in self.down or (_me, peer) in self.cut:
                return defer.fail(PeerUnavailable(peer))
            avatar = PeerAvatar(_me, self.nodes[peer], self.config.node_names, self.nodes[peer].limit)
            try:
                return defer.succeed(getattr(avatar, "perspective_" + method)(*args))
            except Exception:
                return defer.fail()

        replicator = Replicator(self.clock, self.config.cluster, call, lambda: 600)
        node = SessionNode(
            self.clock, self.config, name, now=self.clock.seconds, call=call,
            connected=lambda peer, _me=name: peer not in self.down and _me not in self.down and (_me, peer) not in self.cut,
            peer_load=lambda peer: len(self.nodes[peer].store), send=replicator.send,
        )
        self.nodes[name] = node
        self.replicators[name] = replicator

    def request(self, case, name, route, work=None, turn=True):
        """
        One request on C{name}: open, let C{work} change the data, close.
        """
        node = self.nodes[name]
        handle = case.successResultOf(node.open(route))
        if work is not None:
            work(handle.data)
        d = node.close(handle)
        if turn:
            self.clock.advance(0)
        return handle, d


def add(item):
    return lambda data: data.setdefault("cart", []).append(item)


class RequestPathTests(SynchronousTestCase):
    def test_first_write_creates_replicated_session(self):
        """The first write creates a session, replicated to the furthest node before the response."""
        c = Cluster()
        handle, d = c.request(self, "s1", cookie.NO_ROUTE, add("apple"), turn=False)
        self.assertNoResult(d)
        c.clock.advance(0)
        outcome = self.successResultOf(d)
        route = cookie.decode(outcome.cookie, c.config.node_names)
        self.assertEqual((route.primary, route.secondary), ("s1", "s3"))
        self.assertEqual(c.nodes["s3"].store.get(route.sid).values, {"cart": b'["apple"]'})

    def test_read_creates_nothing(self):
        """A request that writes nothing creates no session and sets no cookie."""
        c = Cluster()
        _, d = c.request(self, "s1", cookie.NO_ROUTE, lambda data: data.get("cart"))
        self.assertIsNone(self.successResultOf(d).cookie)
        self.assertEqual(len(c.nodes["s1"].store), 0)

    def test_in_place_change_replicated(self):
        """Appending to the cart in place reaches the secondary as a delta."""
        c = Cluster()
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("a"))
        route = cookie.decode(self.successResultOf(d).cookie, c.config.node_names)
        _, d = c.request(self, "s1", route, add("b"))
        self.successResultOf(d)
        backup = c.nodes["s3"].store.get(route.sid)
        self.assertEqual((backup.values, backup.version), ({"cart": b'["a","b"]'}, 2))

    def test_async_responds_before_ack(self):
        """In async mode the response does not wait for the secondary."""
        c = Cluster("async")
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("a"), turn=False)
        self.assertIsNotNone(self.successResultOf(d).cookie)
        self.assertEqual(c.replicators["s1"].unreplicated(), 1)
        c.clock.advance(0)
        self.assertEqual(c.replicators["s1"].unreplicated(), 0)

    def test_writes_serialised(self):
        """A second request on a session waits until the first committed."""
        c = Cluster()
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("a"))
        route = cookie.decode(self.successResultOf(d).cookie, c.config.node_names)
        node = c.nodes["s1"]
        first = self.successResultOf(node.open(route))
        second = node.open(route)
        self.assertNoResult(second)
        first.data["cart"].append("b")
        node.close(first)
        handle = self.successResultOf(second)
        self.assertEqual(handle.data["cart"], ["a", "b"])

    def test_logout_removes_both(self):
        """Logout removes the primary and the backup copy."""
        c = Cluster()
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("a"))
        route = cookie.decode(self.successResultOf(d).cookie, c.config.node_names)
        _, d = c.request(self, "s1", route, lambda data: data.invalidate())
        self.assertTrue(self.successResultOf(d).ended)
        self.assertIsNone(c.nodes["s1"].store.get(route.sid))
        self.assertIsNone(c.nodes["s3"].store.get(route.sid))

    def test_too_large(self):
        """A write past the size limit fails with TooLarge and changes nothing."""
        c = Cluster(extra="max_session_bytes = 1KiB")
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("a"))
        route = cookie.decode(self.successResultOf(d).cookie, c.config.node_names)
        _, d = c.request(self, "s1", route, lambda data: data.__setitem__("big", "x" * 5000))
        self.failureResultOf(d).trap(TooLarge)
        self.assertEqual(c.nodes["s3"].store.get(route.sid).version, 1)

    def test_unknown_sid_never_adopted(self):
        """A cookie naming a session nobody holds gets a new session with a new id."""
        c = Cluster()
        forged = cookie.Route("F" * 22, "s2", "s3")
        handle, d = c.request(self, "s1", forged, add("a"))
        route = cookie.decode(self.successResultOf(d).cookie, c.config.node_names)
        self.assertNotEqual(route.sid, "F" * 22)
        self.assertEqual(handle.data["cart"], ["a"])

    def test_touch_reaches_backup(self):
        """A read-only request touches the backup through a cheap touch record."""
        c = Cluster(extra="session_timeout = 100s")
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("a"))
        route = cookie.decode(self.successResultOf(d).cookie, c.config.node_names)
        c.clock.advance(80)
        c.request(self, "s1", route, lambda data: data["cart"])
        c.nodes["s1"].send_touches()
        c.clock.advance(0)
        c.clock.advance(50)
        self.assertEqual(c.nodes["s3"].expire(), [])
        self.assertEqual(c.nodes["s1"].expire(), [])
        c.clock.advance(60)
        self.assertEqual(c.nodes["s3"].expire(), [route.sid])


class FailoverTests(SynchronousTestCase):
    def setUp(self):
        self.c = Cluster()
        _, d = self.c.request(self, "s1", cookie.NO_ROUTE, add("apple"))
        self.route = cookie.decode(self.successResultOf(d).cookie, self.c.config.node_names)

    def final_route(self, d):
        return cookie.decode(self.successResultOf(d).cookie, self.c.config.node_names)

    def test_secondary_promotes_when_primary_dead(self):
        """The secondary becomes primary (epoch + 1), picks a new secondary and sends it the state."""
        self.c.down.add("s1")
        handle, d = self.c.request(self, "s3", self.route, add("pear"))
        route = self.final_route(d)
        self.assertEqual((route.sid, route.primary, route.secondary), (self.route.sid, "s3", "s2"))
        s2 = self.c.nodes["s2"].store.get(route.sid)
        self.assertEqual((s2.values, s2.epoch), ({"cart": b'["apple","pear"]'}, 2))

    def test_takeover_from_live_primary(self):
        """A third server takes over from the live primary, keeps the secondary and fences the old primary."""
        handle, d = self.c.request(self, "s2", self.route, add("pear"))
        route = self.final_route(d)
        self.assertEqual((route.primary, route.secondary), ("s2", "s3"))
        self.assertIsNone(self.c.nodes["s1"].store.get(route.sid))
        self.assertEqual(self.c.nodes["s3"].store.get(route.sid).values, {"cart": b'["apple","pear"]'})
        self.assertEqual(self.c.nodes["s3"].store.get(route.sid).epoch, 2)

    def test_takeover_from_secondary_when_primary_dead(self):
        """With the primary dead, a third server takes the state from the secondary."""
        self.c.down.add("s1")
        handle, d = self.c.request(self, "s2", self.route, add("pear"))
        route = self.final_route(d)
        self.assertEqual((route.primary, route.secondary), ("s2", "s3"))
        self.assertEqual(handle.data["cart"], ["apple", "pear"])

    def test_old_primary_fenced(self):
        """An old primary cut off during a takeover has its next write refused and drops its copy."""
        self.c.down.add("s1")
        self.c.request(self, "s2", self.route, add("pear"))
        self.c.down.discard("s1")
        _, d = self.c.request(self, "s1", self.route, add("late"))
        self.failureResultOf(d).trap(Fenced)
        self.assertIsNone(self.c.nodes["s1"].store.get(self.route.sid))
        self.assertEqual(self.c.nodes["s3"].store.get(self.route.sid).values, {"cart": b'["apple","pear"]'})

    def test_lost_secondary_reprotected(self):
        """When the secondary is gone the write is protected on another node before the response."""
        self.c.down.add("s3")
        _, d = self.c.request(self, "s1", self.route, add("pear"))
        route = self.final_route(d)
        self.assertEqual(route.secondary, "s2")
        self.assertEqual(self.c.nodes["s2"].store.get(route.sid).values, {"cart": b'["apple","pear"]'})

    def test_eager_reprotect_on_peer_down(self):
        """Eager mode re-protects every session of a lost secondary at once."""
        self.c.down.add("s3")
        self.c.nodes["s1"].peer_down("s3")
        self.c.clock.advance(0)
        self.assertEqual(self.c.nodes["s1"].store.get(self.route.sid).secondary, "s2")
        self.assertIsNotNone(self.c.nodes["s2"].store.get(self.route.sid))

    def test_secondary_promotes_when_primary_found_dead(self):
        """When its primary dies, the secondary promotes itself at once and protects the session elsewhere."""
        self.c.down.add("s1")
        self.assertEqual(self.successResultOf(self.c.nodes["s3"].peer_down("s1")), 1)
        self.c.clock.advance(0)
        promoted = self.c.nodes["s3"].store.get(self.route.sid)
        self.assertEqual((promoted.primary, promoted.secondary, promoted.epoch), ("s3", "s2", 2))
        self.assertEqual(self.c.nodes["s2"].store.get(self.route.sid).epoch, 2)

    def test_no_promotion_across_a_partition(self):
        """A secondary cut off from a primary that others still reach does not promote itself."""
        self.c.cut.update({("s3", "s1"), ("s1", "s3")})
        d = self.c.nodes["s3"].peer_down("s1")
        self.c.clock.pump([1.0] * 10)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.c.nodes["s3"].store.get(self.route.sid).primary, "s1")

    def test_promotion_waits_for_others_to_notice(self):
        """A node that has not yet noticed the primary's death delays the promotion, not prevents it."""
        self.c.cut.update({("s3", "s1"), ("s1", "s3")})
        d = self.c.nodes["s3"].peer_down("s1")
        self.assertNoResult(d)
        self.c.down.add("s1")
        self.c.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(self.c.nodes["s3"].store.get(self.route.sid).primary, "s3")

    def test_resync_on_reconnect(self):
        """A reconnecting secondary that missed updates is resynced by digest."""
        backup = self.c.nodes["s3"].store.get(self.route.sid)
        backup.version = 0
        resent = self.successResultOf(self.c.nodes["s1"].resync("s3"))
        self.c.clock.advance(0)
        self.assertEqual(resent, 1)
        self.assertEqual(self.c.nodes["s3"].store.get(self.route.sid).version, 1)


class MonotonicExpiryTests(SynchronousTestCase):
    def test_wall_clock_jump_expires_nothing(self):
        """Expiry follows the monotonic clock: a jump of the reactor's wall clock expires nothing."""
        c = Cluster(extra="session_timeout = 60s")
        monotonic = [0.0]
        node = c.nodes["s1"]
        node.now = lambda: monotonic[0]
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("a"))
        self.successResultOf(d)
        c.clock.advance(10**6)
        self.assertEqual(node.expire(), [])
        monotonic[0] = 61.0
        self.assertEqual(len(node.expire()), 1)


# -- no acknowledged write is lost across single failures ------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

actions = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 99)),
        st.tuples(st.just("kill"), st.sampled_from(["s1", "s2", "s3"])),
        st.tuples(st.just("revive"), st.just("")),
        st.tuples(st.just("elsewhere"), st.sampled_from(["s1", "s2", "s3"])),
    ),
    max_size=40,
)


class DurabilityTests(SynchronousTestCase):
    def kill(self, c, name):
        c.down.add(name)
        for other, node in c.nodes.items():
            if other != name:
                c.replicators[other].fail(name)
                node.peer_down(name)
        c.clock.advance(0)

    def revive(self, c, name):
        c.down.discard(name)
        c.add(name)
        for other, node in c.nodes.items():
            if other != name:
                node.peer_up(name)
        c.clock.advance(0)

    @settings(max_examples=150, deadline=None)
    @given(actions)
    def test_acknowledged_writes_survive_single_failures(self, script):
        """Sync writes survive any sequence of single node deaths, restarts and misrouted requests."""
        c = Cluster()
        model = []
        route = cookie.NO_ROUTE
        dead = None
        for kind, arg in script:
            if kind == "kill" and dead is None:
                dead = arg
                self.kill(c, dead)
                continue
            if kind == "revive" and dead is not None:
                self.revive(c, dead)
                dead = None
                continue
            live = [n for n in c.config.node_names if n not in c.down]
            if kind == "elsewhere" and arg in live:
                target = arg
            else:
                target = next((n for n in route.candidates() if n not in c.down), live[0])
            if kind == "write":
                work = add(arg)
            else:
                work = None
            handle, d = c.request(self, target, route, work)
            outcome = self.successResultOf(d)
            if work is not None:
                model.append(arg)
            if outcome.cookie is not None:
                route = cookie.decode(outcome.cookie, c.config.node_names)
            if route.sid is not None:
                self.assertEqual(handle.data.get("cart", []), model)
                self.assertNotEqual(route.primary, route.secondary)


class ReadOnlyTakeoverTests(SynchronousTestCase):
    def test_read_only_takeover_waits_for_protection(self):
        """In sync mode even a read-only request that took a session over answers only once the secondary has it."""
        c = Cluster()
        _, d = c.request(self, "s1", cookie.NO_ROUTE, add("apple"))
        route = cookie.decode(self.successResultOf(d).cookie, c.config.node_names)
        c.down.add("s1")
        _, d = c.request(self, "s3", route, lambda data: data["cart"], turn=False)
        self.assertNoResult(d)
        c.clock.advance(0)
        outcome = self.successResultOf(d)
        new = cookie.decode(outcome.cookie, c.config.node_names)
        self.assertEqual((new.primary, new.secondary), ("s3", "s2"))
        self.assertEqual(c.nodes["s2"].store.get(route.sid).values, {"cart": b'["apple"]'})
