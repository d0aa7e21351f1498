"""
Tests for L{appliance.balancer.policy}: policies, plans, retry rules,
health counting and the sticky table.  Time is a plain number.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from appliance.balancer.policy import (
    Fastest,
    IPolicy,
    LeastRequests,
    Nodes,
    RoundRobin,
    StickyTable,
    make_policy,
    may_retry,
    plan_plugin,
    plan_sticky,
    quick_pick,
)
from appliance.cookie import NO_ROUTE, Route


def names(states):
    return [s.name for s in states]


class PolicyTests(SynchronousTestCase):
    def setUp(self):
        self.nodes = Nodes.of(["s1", "s2", "s3"])
        self.states = list(self.nodes.states.values())

    def test_interfaces(self):
        """Every policy provides IPolicy and make_policy knows them by config name."""
        for name in ("round_robin", "least_requests", "fastest"):
            self.assertTrue(verifyObject(IPolicy, make_policy(name)))
        self.assertRaises(ValueError, make_policy, "random")

    def test_round_robin(self):
        """Round robin starts one server further each time and lists every server."""
        rr = RoundRobin()
        firsts = [rr.order(self.states)[0].name for _ in range(4)]
        self.assertEqual(firsts, ["s1", "s2", "s3", "s1"])
        self.assertEqual(sorted(names(rr.order(self.states))), ["s1", "s2", "s3"])

    def test_least_requests(self):
        """Least requests prefers the server with fewest requests in flight."""
        self.nodes.started("s1")
        self.nodes.started("s1")
        self.nodes.started("s2")
        self.assertEqual(names(LeastRequests().order(self.states)), ["s3", "s2", "s1"])

    def test_least_requests_ties_rotate(self):
        """With equal load, least requests spreads placements round robin."""
        policy = LeastRequests()
        self.assertEqual([policy.order(self.states)[0].name for _ in range(3)], ["s1", "s2", "s3"])

    def test_fastest(self):
        """Fastest prefers the lowest average response time."""
        self.nodes.started("s1")
        self.nodes.finished("s1", 0.300)
        self.nodes.started("s2")
        self.nodes.finished("s2", 0.010)
        self.nodes.started("s3")
        self.nodes.finished("s3", 0.100)
        self.assertEqual(names(Fastest().order(self.states)), ["s2", "s3", "s1"])

    def test_fastest_weighs_load(self):
        """A fast server with many requests in flight yields to a slightly slower idle one."""
        for name, t in (("s1", 0.010), ("s2", 0.015), ("s3", 1.0)):
            self.nodes.started(name)
            self.nodes.finished(name, t)
        for _ in range(3):
            self.nodes.started("s1")
        self.assertEqual(Fastest().order(self.states)[0].name, "s2")

    def test_ewma(self):
        """The response-time average moves a fifth of the way to each new sample."""
        self.nodes.started("s1")
        self.nodes.finished("s1", 1.0)
        self.nodes.started("s1")
        self.nodes.finished("s1", 2.0)
        self.assertAlmostEqual(self.nodes["s1"].ewma, 1.2)
        self.assertEqual(self.nodes["s1"].outstanding, 0)

    def test_failure_not_sampled(self):
        """A failed request ends its outstanding count without a time sample."""
        self.nodes.started("s1")
        self.nodes.finished("s1", None)
        self.assertEqual((self.nodes["s1"].outstanding, self.nodes["s1"].samples), (0, 0))


class PlanTests(SynchronousTestCase):
    def setUp(self):
        self.nodes = Nodes.of(["s1", "s2", "s3"], down_time=5.0, rise=2, fall=2)

    def test_plugin_primary_then_secondary(self):
        """Plugin mode tries the primary, then the secondary, then the rest."""
        plan = plan_plugin(Route("x", "s2", "s3"), self.nodes, RoundRobin(), 0.0)
        self.assertEqual(plan, ("s2", "s3", "s1"))

    def test_plugin_no_cookie(self):
        """Without a usable cookie, placement is by policy."""
        rr = RoundRobin()
        self.assertEqual(plan_plugin(NO_ROUTE, self.nodes, rr, 0.0), ("s1", "s2", "s3"))
        self.assertEqual(plan_plugin(NO_ROUTE, self.nodes, rr, 0.0), ("s2", "s3", "s1"))

    def test_plugin_primary_down(self):
        """A primary that is down goes last: the secondary takes the request."""
        self.nodes.refused("s2", 10.0)
        plan = plan_plugin(Route("x", "s2", "s3"), self.nodes, RoundRobin(), 11.0)
        self.assertEqual(plan, ("s3", "s1", "s2"))

    def test_passive_down_expires(self):
        """A refused server rejoins after down_time."""
        self.nodes.refused("s2", 10.0)
        self.assertFalse(self.nodes["s2"].available(14.9))
        self.assertTrue(self.nodes["s2"].available(15.0))

    def test_fail_open(self):
        """When every server is down each is still tried, in the usual order."""
        for name in ("s1", "s2", "s3"):
            self.nodes.refused(name, 0.0)
        self.assertEqual(plan_plugin(Route("x", "s3", "s1"), self.nodes, RoundRobin(), 1.0), ("s3", "s1", "s2"))

    def test_sticky(self):
        """Sticky mode tries the learned server first, else by policy."""
        self.assertEqual(plan_sticky("s3", self.nodes, RoundRobin(), 0.0)[0], "s3")
        self.assertEqual(plan_sticky(None, self.nodes, RoundRobin(), 0.0), ("s1", "s2", "s3"))

    def test_quick_pick(self):
        """The preferred server is picked alone only while it is available and known."""
        self.assertEqual(quick_pick("s2", self.nodes, 0.0), "s2")
        self.assertIsNone(quick_pick(None, self.nodes, 0.0))
        self.assertIsNone(quick_pick("s9", self.nodes, 0.0))
        self.nodes.refused("s2", 0.0)
        self.assertIsNone(quick_pick("s2", self.nodes, 1.0))

    def test_health_fall_and_rise(self):
        """fall failures take a server out, rise passes bring it back."""
        self.assertIsNone(self.nodes.checked("s1", False))
        self.assertEqual(self.nodes.checked("s1", False), False)
        self.assertFalse(self.nodes["s1"].available(0.0))
        self.assertIsNone(self.nodes.checked("s1", True))
        self.assertEqual(self.nodes.checked("s1", True), True)
        self.assertTrue(self.nodes["s1"].available(0.0))

    def test_rise_clears_passive_down(self):
        """A server that passes its checks again is not held down by an old refusal."""
        self.nodes.checked("s1", False)
        self.nodes.checked("s1", False)
        self.nodes.refused("s1", 0.0)
        self.nodes.checked("s1", True)
        self.nodes.checked("s1", True)
        self.assertTrue(self.nodes["s1"].available(1.0))

    def test_flapping_resets(self):
        """A pass between failures restarts the count toward fall."""
        self.nodes.checked("s1", False)
        self.nodes.checked("s1", True)
        self.assertIsNone(self.nodes.checked("s1", False))
        self.assertTrue(self.nodes["s1"].up)


class RetryTests(SynchronousTestCase):
    def test_not_sent(self):
        """Any method is retried when nothing was sent."""
        self.assertTrue(may_retry(b"POST", sent=False, replayable=False))

    def test_idempotent(self):
        """Idempotent methods with a held body are retried after sending."""
        for method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"):
            self.assertTrue(may_retry(method, sent=True, replayable=True))

    def test_post_never_twice(self):
        """POST and PATCH are not retried once sent."""
        self.assertFalse(may_retry(b"POST", sent=True, replayable=True))
        self.assertFalse(may_retry(b"PATCH", sent=True, replayable=True))

    def test_streamed_body(self):
        """A streamed (not held) body is not retried even for PUT."""
        self.assertFalse(may_retry(b"PUT", sent=True, replayable=False))


class StickyTableTests(SynchronousTestCase):
    def test_learn_lookup(self):
        """A learned value maps to its server."""
        t = StickyTable(ttl=10.0)
        t.learn(b"v1", "s1", 0.0)
        self.assertEqual(t.lookup(b"v1", 5.0), "s1")
        self.assertIsNone(t.lookup(b"v2", 5.0))
        self.assertIsNone(t.lookup(None, 5.0))

    def test_expiry(self):
        """Entries unused for ttl seconds are forgotten."""
        t = StickyTable(ttl=10.0)
        t.learn(b"v1", "s1", 0.0)
        self.assertIsNone(t.lookup(b"v1", 10.0))
        self.assertEqual(len(t), 0)

    def test_use_refreshes(self):
        """Each use restarts the ttl."""
        t = StickyTable(ttl=10.0)
        t.learn(b"v1", "s1", 0.0)
        self.assertEqual(t.lookup(b"v1", 9.0), "s1")
        self.assertEqual(t.lookup(b"v1", 18.0), "s1")

    def test_relearn(self):
        """Learning again moves the value to its new server."""
        t = StickyTable(ttl=10.0)
        t.learn(b"v1", "s1", 0.0)
        t.learn(b"v1", "s2", 1.0)
        self.assertEqual(t.lookup(b"v1", 2.0), "s2")

    def test_expire_sweep(self):
        """expire drops only the entries past their time."""
        t = StickyTable(ttl=10.0)
        t.learn(b"old", "s1", 0.0)
        t.learn(b"new", "s2", 5.0)
        self.assertEqual(t.expire(12.0), 1)
        self.assertEqual(t.lookup(b"new", 12.0), "s2")

    def test_bounded(self):
        """The table holds at most max_entries, evicting the least recently used."""
        t = StickyTable(ttl=100.0, max_entries=2)
        t.learn(b"a", "s1", 0.0)
        t.learn(b"b", "s1", 0.0)
        t.lookup(b"a", 1.0)
        t.learn(b"c", "s1", 2.0)
        self.assertEqual((t.lookup(b"a", 3.0), t.lookup(b"b", 3.0)), ("s1", None))
