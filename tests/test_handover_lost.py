"""
A takeover whose answer never reaches the requester (its call timed out
after the source handed the session over): the session is not lost.  The
source keeps the copy, naming the requester its primary at the new epoch;
the requester takes it again on the session's next request, with every
acknowledged write, and digests in between drop nothing.
"""

from __future__ import annotations

from twisted.internet import defer

from appliance.replication.link import PeerUnavailable
from appliance.server.drain import Drain
from appliance.server.errors import NotServing

from .test_node import Base, add


class LostHandOverTests(Base):
    def lose_answers(self, server, method):
        """
        Calls of C{method} from C{server} reach their peer and are carried
        out there, but their answers are lost (the link timed out).
        """
        node = server.node
        real = node.call

        def call(peer, name, *args):
            d = real(peer, name, *args)
            if name != method:
                return d
            lost = defer.Deferred()
            d.addBoth(lambda _: lost.errback(PeerUnavailable(peer)))
            return lost

        node.call = call
        return lambda: setattr(node, "call", real)

    def test_lost_hand_over_answer_loses_nothing(self):
        """The requester of a takeover whose answer was lost gets the session on its next request, with every write, even after digests ran."""
        s = self.sim()
        route = self.start(("apple", "pear"))
        self.assertEqual((route.primary, route.secondary), ("s1", "s3"))
        restore = self.lose_answers(s.servers["s2"], "hand_over")
        self.fails("s2", route, add("plum"), NotServing)
        restore()
        self.assertIsNone(s.servers["s2"].node.store.get(route.sid))
        for name, peer in (("s1", "s3"), ("s1", "s2"), ("s3", "s1")):
            s.until(s.servers[name].node.resync(peer))
        s.run(1.0)
        cart, after = self.cart("s2", route)
        self.assertEqual(cart, ["apple", "pear"])
        self.assertEqual(after.primary, "s2")
        _, after = self.ok("s2", after, add("fig"))
        self.assertEqual(self.cart("s2", after)[0], ["apple", "pear", "fig"])

    def test_source_no_longer_serves_what_it_handed_over(self):
        """After handing a session over (answer lost or not), the source serves it no more: a request there is not served by its old copy."""
        s = self.sim()
        route = self.start(("apple",))
        restore = self.lose_answers(s.servers["s2"], "hand_over")
        self.fails("s2", route, add("plum"), NotServing)
        restore()
        self.assertIsNone(s.servers["s1"].node.store.primary_of(route.sid))
        self.assertEqual(s.servers["s1"].node.store.get(route.sid).primary, "s2")

    def test_drain_with_a_lost_take_answer_serves_those_sessions_no_more(self):
        """A draining node whose hand-over answer is lost stops serving those sessions (their owner is unknown) and they live on elsewhere."""
        s = self.sim()
        route = self.start(("apple",))
        server = s.servers["s1"]
        restore = self.lose_answers(server, "take")
        report = s.until(Drain(server.node, server.replicator.flush, server.replicator.unreplicated, 5.0).run())
        restore()
        self.assertIsNone(server.node.store.primary_of(route.sid))
        self.assertEqual(report.handed, 0)
        s.kill("s1")
        s.run(5.0)
        self.assertEqual(self.cart(route.secondary, route)[0], ["apple"])
