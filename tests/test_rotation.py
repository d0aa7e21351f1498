"""
Session id rotation on the request path, on the simulated cluster
(L{tests.sim}): the data stays, the old id dies on the primary and the
secondary at once, and no failover, takeover or orphan copy brings it back.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance import cookie
from appliance.core.store import Fenced, TooLarge

from .sim import Sim
from .test_node import Base, add, read


def rotate(data):
    data.rotate()


def rotate_and_add(item):
    def work(data):
        data.rotate()
        data.setdefault("cart", []).append(item)

    return work


class RotationTests(Base):
    def setUp(self):
        self.sim()
        self.old = self.start(["apple"])
        self.assertEqual((self.old.primary, self.old.secondary), ("s1", "s3"))

    def holders(self, sid):
        return sorted(n for n, s in self.s.servers.items() if s.node.store.get(sid) is not None)

    def test_new_id_keeps_data_old_id_dead_everywhere(self):
        """After a rotation the new id carries the data on both copies and the old id reads as no session on every server."""
        handle, new = self.ok("s1", self.old, rotate_and_add("pear"))
        self.assertNotEqual(new.sid, self.old.sid)
        self.assertEqual((new.primary, new.secondary), ("s1", "s3"))
        self.assertEqual(self.holders(new.sid), ["s1", "s3"])
        self.assertEqual(self.s.servers["s3"].node.store.get(new.sid).values, {"cart": b'["apple","pear"]'})
        self.assertEqual(self.holders(self.old.sid), [])
        for name in ("s1", "s2", "s3"):
            items, route = self.cart(name, self.old)
            self.assertEqual(items, [], name)
        self.assertEqual(self.cart("s1", new)[0], ["apple", "pear"])

    def test_rotation_acknowledged_before_response(self):
        """In sync mode the secondary has renamed its copy when the response may leave."""
        node = self.s.servers["s1"].node
        done = self.s.open_close("s1", self.old, rotate)
        self.assertNoResult(done)
        self.s.until(done)
        self.assertTrue(self.s.servers["s3"].node.store.gone(self.old.sid))
        self.assertEqual(len(node.locks), 0)

    def test_old_id_not_revived_by_failover(self):
        """With the primary killed after a rotation, the old id is served by nobody and the new one by the secondary."""
        _, new = self.ok("s1", self.old, rotate)
        self.s.kill("s1")
        self.s.run(1.0)
        self.assertEqual(self.cart("s2", self.old)[0], [])
        self.assertEqual(self.cart("s3", self.old)[0], [])
        items, route = self.cart("s2", new)
        self.assertEqual((items, route.sid), (["apple"], new.sid))

    def test_orphan_copy_of_old_id_never_served(self):
        """A backup of the old id left behind on a third server is dropped, not promoted, once the primary dies."""
        self.s.cut("s3", "s1")
        self.s.run(1.0)
        _, moved = self.ok("s1", self.old, add("pear"))
        self.assertEqual(moved.secondary, "s2")
        self.assertIsNotNone(self.s.servers["s3"].node.store.get(self.old.sid))
        _, new = self.ok("s1", moved, rotate)
        self.s.kill("s1")
        self.s.run(3.0)
        self.assertIsNone(self.s.servers["s3"].node.store.get(self.old.sid))
        self.assertEqual(self.cart("s3", self.old)[0], [])
        self.assertEqual(self.cart("s3", new)[0], ["apple", "pear"])

    def test_orphan_copy_dropped_on_request(self):
        """A request for the old id on a server holding an orphan copy of it gets no session, and the copy goes."""
        self.s.cut("s3", "s1")
        self.s.run(1.0)
        _, moved = self.ok("s1", self.old, add("pear"))
        _, new = self.ok("s1", moved, rotate)
        self.s.heal()
        self.assertEqual(self.cart("s3", self.old)[0], [])
        self.assertIsNone(self.s.servers["s3"].node.store.get(self.old.sid))

    def test_rotation_to_a_lost_secondary_reprotects_with_tombstone(self):
        """A rotation whose secondary is gone is protected elsewhere, and the new secondary refuses the old id too."""
        self.s.kill("s3")
        _, new = self.ok("s1", self.old, rotate)
        self.assertEqual(new.secondary, "s2")
        self.assertTrue(self.s.servers["s2"].node.store.gone(self.old.sid))
        self.assertEqual(self.s.servers["s2"].node.store.get(new.sid).values, {"cart": b'["apple"]'})
        self.assertEqual(self.cart("s2", self.old)[0], [])

    def test_too_large_change_does_not_rotate(self):
        """A rotating request whose change is refused as too large leaves the session under its old id on both copies."""
        self.s.servers["s1"].node.store.max_bytes = 64

        def work(data):
            data.rotate()
            data["blob"] = "x" * 100

        self.fails("s1", self.old, work, TooLarge)
        self.assertEqual(self.holders(self.old.sid), ["s1", "s3"])
        for name in ("s1", "s3"):
            self.assertEqual(self.s.servers[name].node.store.tombstones, {}, name)
        items, route = self.cart("s1", self.old)
        self.assertEqual((items, route.sid), (["apple"], self.old.sid))
        self.assertEqual(len(self.s.servers["s1"].node.locks), 0)

    def test_rotation_of_new_session_is_just_new(self):
        """Rotating a session created by the same request gives it one id, nothing to bury."""
        _, route = self.ok("s2", cookie.NO_ROUTE, rotate_and_add("fig"))
        self.assertEqual(self.cart("s2", route)[0], ["fig"])
        self.assertEqual(self.s.servers["s2"].node.store.tombstones, {})

    def test_takeover_after_rotation_carries_tombstone(self):
        """A server taking the new id over from the live primary refuses the old id as well."""
        _, new = self.ok("s1", self.old, rotate)
        _, taken = self.ok("s2", new, read)
        self.assertEqual(taken.primary, "s2")
        self.assertTrue(self.s.servers["s2"].node.store.gone(self.old.sid))


class RivalRotationTests(Base):
    def test_rival_rotation_undone(self):
        """A rival primary of the same epoch that rotates gets no rotation: its copy keeps the old id, serves no more, and buries nothing."""
        self.sim()
        old = self.start(["apple"])
        self.s.kill("s1")
        self.s.run(0.5)
        early = self.s.servers["s3"].node.store.get(old.sid).full(self.s.servers["s3"].now())
        _, route = self.ok("s3", old, add("pear"))
        self.assertEqual((route.primary, route.secondary), ("s3", "s2"))
        s1 = self.s.restart("s1")
        self.s.run(2.0)
        s1.node.store.adopt(early, "s2", s1.now())
        self.fails("s1", cookie.Route(route.sid, "s1", "s2"), rotate, Fenced)
        store = s1.node.store
        self.assertEqual((store.tombstones, store.primary_of(old.sid)), ({}, None))
        self.assertEqual(sorted(store.sessions), [old.sid])
        self.assertEqual(self.s.servable(old.sid), ["s3"])
        self.assertFalse(self.s.servers["s2"].node.store.gone(old.sid))
        self.assertEqual(self.cart("s3", route)[0], ["apple", "pear"])


class AsyncRotationTests(SynchronousTestCase):
    def test_async_rotation_reaches_backup(self):
        """In async mode the rotation reaches the secondary after the response, and the old id dies there."""
        s = Sim(replication="async")
        result = s.request("s1", cookie.NO_ROUTE, add("apple"))
        old = cookie.decode(result[1].cookie, s.config.node_names)
        s.run(0.1)
        _, outcome = s.request("s1", old, rotate)
        new = cookie.decode(outcome.cookie, s.config.node_names)
        s.run(0.1)
        backup = s.servers[old.secondary].node.store
        self.assertTrue(backup.gone(old.sid))
        self.assertEqual(backup.get(new.sid).values, {"cart": b'["apple"]'})


class OrphanTests(Base):
    def test_orphan_elsewhere_never_promoted(self):
        """An orphan copy of the old id on a server the new id never reaches is not promoted when the primary dies."""
        self.sim(servers=("s1", "s2", "s3", "s4"))
        old = self.start(["apple"])
        _, new = self.ok(old.primary, old, rotate)
        others = [n for n in ("s1", "s2", "s3", "s4") if n not in (new.primary, new.secondary)]
        keeper = others[0]
        stale = self.s.servers[new.primary].node.store.get(new.sid).full(self.s.servers[new.primary].now())
        store = self.s.servers[keeper].node.store
        store.apply(
            type(stale)(old.sid, 1, 1, new.primary, keeper, stale.timeout, 0.0, stale.values),
            self.s.servers[keeper].now(),
            self.s.servers[new.primary].incarnation,
        )
        self.assertIsNotNone(store.get(old.sid))
        self.s.kill(new.primary)
        self.s.run(3.0)
        self.assertEqual(self.s.servable(old.sid), [])
        self.assertIsNone(store.get(old.sid))
        self.assertEqual(self.cart(keeper, new)[0], ["apple"])
