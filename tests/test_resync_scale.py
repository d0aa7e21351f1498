"""
A digest and resync of more than 100,000 sessions over a real PB link
(two session servers in this process, TCP on loopback): the digest goes in
parts and its answers in chunks, so nothing exceeds Banana's 640 KiB string
limit and the link stays up while every session reaches its new backup.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from appliance.config import ClusterConfig
from appliance.core.session import Changes
from appliance.server.service import SessionServerService

from .helpers import cluster_ini

COUNT = 120_000


def sid(i: int) -> str:
    # Spread over the characters a digest is cut by, as random ids are.
    alphabet = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
    return alphabet[i % 64] + ("%021d" % i)


class ResyncAtScaleTests(TestCase):
    timeout = 300

    def start(self, cluster, name):
        service = SessionServerService(reactor, cluster, name)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def wait(self, predicate, seconds):
        for _ in range(int(seconds / 0.1)):
            if predicate():
                return True
            yield task.deferLater(reactor, 0.1, lambda: None)
        return predicate()

    @defer.inlineCallbacks
    def test_resync_of_120000_sessions_over_pb(self):
        """120,000 sessions missing on their backup are found by a digest in parts and resent, over one PB connection that never drops, the primary keeping its lease."""
        # No rebalancing: s1 holding every primary is what the test sets up.
        # Slow heartbeats: on a shared machine two servers in one process
        # must not lose their leases to CPU contention (failure detection is
        # not what this test is about).
        text, _ = cluster_ini(names=("s1", "s2"), extra="drain_timeout = 1s\ndigest_interval = 1h\nlease_time = 8s\nrebalance_rate = 0")
        text = text.replace("heartbeat_interval = 250ms", "heartbeat_interval = 1s").replace("replication_timeout = 2s", "replication_timeout = 10s")
        cluster = ClusterConfig.from_string(text)
        s1 = self.start(cluster, "s1")
        s2 = self.start(cluster, "s2")
        linked = yield self.wait(lambda: s1.links["s2"].connected and s2.links["s1"].connected and s1.quorum.may_serve(), 30)
        self.assertTrue(linked, "the servers did not link")
        broker = s1.links["s2"].remote.broker
        incarnation = s1.membership.incarnation
        # s1 is primary of COUNT sessions that s2 should back but lacks (as
        # after a restart of s2), made a slice per reactor turn, as traffic
        # would make them.
        value = Changes({"cart": b'["apple","pear"]'}, ())
        store = s1.node.store
        for start in range(0, COUNT, 2000):
            for i in range(start, start + 2000):
                store.create(sid(i), value, "s2", s1.now())
            yield task.deferLater(reactor, 0, lambda: None)
        resent = yield s1.node.resync("s2")
        self.assertEqual(resent, COUNT)
        done = yield self.wait(lambda: len(s2.node.store) == COUNT, 240)
        self.assertTrue(done, f"s2 holds {len(s2.node.store)} of {COUNT}")
        self.assertIs(s1.links["s2"].remote.broker, broker, "the link was dropped and made again")
        self.assertFalse(broker.disconnected)
        self.assertEqual(s1.membership.incarnation, incarnation, "s1 lost its lease on the way")
        self.assertEqual(s2.node.store.get(sid(COUNT - 1)).values, {"cart": b'["apple","pear"]'})
        # A second digest finds nothing to resend.
        again = yield s1.node.resync("s2")
        self.assertEqual(again, 0)
