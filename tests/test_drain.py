"""
Graceful drain (L{appliance.server.drain}) on the simulated cluster: the
order of a drain, what the draining node still serves, and what the other
nodes do for it, with every process on its own fake clock.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance import cookie
from appliance.replication import wire
from appliance.server.drain import Drain
from appliance.server.errors import NotServing

from .test_node import Base, add


class DrainTests(Base):
    def drain(self, name="s1", timeout=30.0):
        server = self.s.servers[name]
        return Drain(server.node, server.replicator.flush, server.replicator.unreplicated, timeout).run()

    def sessions(self, n=6, on="s1"):
        return [self.start((f"item{i}", "more"), on=on) for i in range(n)]

    def holders(self, sid):
        return {name: s.node.store.get(sid) for name, s in self.s.servers.items() if s.node.store.get(sid) is not None}

    def test_primaries_go_to_their_secondaries_at_a_higher_epoch(self):
        """Each primary of the draining node becomes primary on its secondary at epoch + 1, backed by a third node that holds the same state, and nothing stays on the drained node."""
        s = self.sim()
        routes = self.sessions()
        before = {r.sid: (r.secondary, s.servers["s1"].node.store.get(r.sid).epoch) for r in routes}
        report = s.until(self.drain())
        self.assertEqual((report.handed, report.left, report.timed_out), (len(routes), [], False))
        for r in routes:
            copies = self.holders(r.sid)
            self.assertNotIn("s1", copies)
            secondary, epoch = before[r.sid]
            owner = copies[secondary]
            self.assertTrue(s.servers[secondary].node.store.mine(owner))
            self.assertEqual(owner.epoch, epoch + 1)
            self.assertNotIn(owner.secondary, (None, "s1", secondary))
            backup = copies[owner.secondary]
            self.assertEqual((backup.version, backup.epoch, backup.values), (owner.version, owner.epoch, owner.values))

    def test_backups_are_re_protected_elsewhere(self):
        """The primaries that the draining node backs get a new secondary (not the draining node) holding their state, before the drain ends."""
        s = self.sim()
        routes = [r for r in self.sessions(8, on="s3") if r.secondary == "s1"]
        self.assertTrue(routes)
        s.until(self.drain())
        for r in routes:
            owner = s.servers["s3"].node.store.primary_of(r.sid)
            self.assertEqual(owner.secondary, "s2")
            self.assertEqual(s.servers["s2"].node.store.get(r.sid).version, owner.version)

    def test_no_new_copy_on_a_draining_node(self):
        """Once a node drains, its peers place no new session's backup on it."""
        s = self.sim()
        s.until(self.drain())
        for _ in range(4):
            for on in ("s2", "s3"):
                route = self.start(on=on)
                self.assertNotIn(route.secondary, ("s1", None))

    def test_draining_node_declines_and_the_new_owner_serves(self):
        """A draining node answers 'not served' to a new session and to a session it handed over; the new owner serves that session with every write."""
        s = self.sim()
        (route,) = self.sessions(1)
        s.until(self.drain())
        self.fails("s1", cookie.NO_ROUTE, add("x"), NotServing)
        self.fails("s1", route, add("x"), NotServing)
        cart, after = self.cart(route.secondary, route)
        self.assertEqual(cart, ["item0", "more"])
        self.assertEqual(after.primary, route.secondary)
        _, after = self.ok(after.primary, after, add("fig"))
        self.assertEqual(self.cart(after.primary, after)[0], ["item0", "more", "fig"])

    def test_request_in_flight_finishes_before_its_session_moves(self):
        """A request holding its session when the drain starts commits first; the session moves afterwards with that write."""
        s = self.sim()
        (route,) = self.sessions(1)
        node = s.servers["s1"].node
        handle = self.successResultOf(node.open(route))
        drained = self.drain()
        s.run(1.0)
        self.assertIsNotNone(node.store.primary_of(route.sid), "moved while a request held it")
        handle.data["cart"] = handle.data["cart"] + ["late"]
        outcome = s.until(node.close(handle))
        self.assertNotIsInstance(outcome, Failure)
        report = s.until(drained)
        self.assertEqual(report.handed, 1)
        self.assertEqual(self.cart(route.secondary, route)[0], ["item0", "more", "late"])

    def test_batched_writes_are_flushed_and_nothing_is_lost(self):
        """In batched mode (a long interval), writes still queued when the drain starts reach the new owner, and the drain ends with nothing queued."""
        s = self.sim(replication="batched", extra="batch_count = 1000\nbatch_interval = 1h")
        (route,) = self.sessions(1)
        for item in ("a", "b", "c"):
            _, route = self.ok("s1", route, add(item))
        self.assertGreater(s.servers["s1"].replicator.unreplicated(), 0)
        report = s.until(self.drain())
        self.assertEqual((report.handed, report.queued), (1, 0))
        self.assertEqual(self.cart(route.secondary, route)[0], ["item0", "more", "a", "b", "c"])

    def test_async_mode_hands_over_too(self):
        """In async mode every primary is handed over with its latest write."""
        s = self.sim(replication="async")
        routes = self.sessions(4)
        _, routes[0] = self.ok("s1", routes[0], add("last"))
        report = s.until(self.drain())
        self.assertEqual(report.handed, 4)
        self.assertEqual(self.cart(routes[0].secondary, routes[0])[0], ["item0", "more", "last"])

    def test_nobody_to_take_ends_at_once_and_says_what_is_left(self):
        """With no peer that can take a session, the drain ends without waiting out its timeout and reports the primaries it kept."""
        s = self.sim(servers=("s1", "s2"), witnesses=("lb1", "lb2"))
        routes = self.sessions(2)
        s.kill("s2")
        s.run(1.0)
        started = s.servers["s1"].now()
        report = s.until(self.drain(timeout=60.0))
        self.assertEqual(sorted(report.left), sorted(r.sid for r in routes))
        self.assertLess(s.servers["s1"].now() - started, 5.0)

    def test_a_request_that_never_ends_bounds_the_drain(self):
        """A request that holds its session past drain_timeout ends the drain at that time, reported in flight with its session not handed over; the others are."""
        s = self.sim()
        routes = self.sessions(3)
        node = s.servers["s1"].node
        self.successResultOf(node.open(routes[0]))
        started = s.servers["s1"].now()
        report = s.until(self.drain(timeout=3.0), limit=20.0)
        self.assertTrue(report.timed_out)
        self.assertLessEqual(s.servers["s1"].now() - started, 3.5)
        self.assertEqual((report.left, report.in_flight, report.handed), ([routes[0].sid], 1, 2))

    def test_no_hand_over_without_the_lease(self):
        """A draining node that lost its lease hands nothing over (its copies may be stale) and keeps them for the rules of failover."""
        s = self.sim()
        routes = self.sessions(2)
        s.isolate("s1")
        s.run(3 * s.settings.lease_time)
        self.assertFalse(s.servers["s1"].quorum.may_serve())
        report = s.until(self.drain(timeout=2.0), limit=20.0)
        self.assertEqual(report.handed, 0)
        self.assertTrue(all(s.servers["s1"].node.store.get(r.sid) is not None for r in routes))

    def test_all_nodes_draining_at_once(self):
        """When every node drains together (the all-in-one stops), no node takes another's sessions and every drain ends without waiting out its timeout."""
        s = self.sim()
        self.sessions(2)
        drains = [self.drain(name, timeout=60.0) for name in ("s1", "s2", "s3")]
        started = s.servers["s1"].now()
        for d in drains:
            s.until(d)
        self.assertLess(s.servers["s1"].now() - started, 10.0)


class TakeEdgeTests(Base):
    def test_take_of_a_newer_copy_is_stale(self):
        """Offering a session whose taker holds a newer epoch answers STALE, and the taker's copy is untouched."""
        s = self.sim()
        (route,) = self.sessions_on_s1()
        owner = s.servers["s1"].node.store.get(route.sid)
        full = owner.full(s.servers["s1"].now())
        taker = s.servers[route.secondary].node
        taker.store.get(route.sid).epoch += 5
        answer = s.until(taker.take("s1", s.servers["s1"].incarnation, [full]))
        self.assertEqual(answer, [wire.Take.STALE])
        self.assertFalse(taker.store.mine(taker.store.get(route.sid)))

    def test_draining_node_refuses_to_take(self):
        """A node that drains itself takes no session from another."""
        s = self.sim()
        (route,) = self.sessions_on_s1()
        full = s.servers["s1"].node.store.get(route.sid).full(0.0)
        taker = s.servers[route.secondary].node
        taker.draining = True
        result = s.until(taker.take("s1", 0, [full]))
        self.assertIsInstance(result, Failure)

    def sessions_on_s1(self):
        return [self.start(("x",))]

    def test_take_answers_travel_the_wire(self):
        """Take answers round-trip, and a malformed one is refused."""
        takes = [wire.Take.TAKEN, wire.Take.STALE, wire.Take.BUSY]
        self.assertEqual(wire.decode_takes(wire.encode_takes(takes), 3), takes)
        for bad in (b"\x00", b"\x00\x07\x01", "xyz", None):
            self.assertRaises(wire.WireError, wire.decode_takes, bad, 3)




class ServiceDrainTests(SynchronousTestCase):
    def test_stop_drains_first_and_health_says_so(self):
        """Stopping a session server's service drains before it closes its ports: health says draining meanwhile, and the ports close only after the drain."""
        from twisted.internet.testing import MemoryReactorClock

        from appliance.config import ClusterConfig
        from appliance.server.service import SessionServerService

        from .helpers import cluster_ini

        text, _ = cluster_ini(extra="drain_timeout = 5s")
        reactor = MemoryReactorClock()
        service = SessionServerService(reactor, ClusterConfig.from_string(text), "s1", now=reactor.seconds)
        service.startService()
        node = service.node
        # One request holds a session, so the drain has to wait for it.
        node.locks.try_take("A" * 22)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(service.health()["status"], "draining")
        self.assertFalse(node.stopped)
        reactor.advance(1.0)
        self.assertNoResult(stopped)
        node.locks.release("A" * 22)
        reactor.advance(1.0)
        self.successResultOf(stopped)
        self.assertTrue(node.stopped)

    def test_operator_request_stops_the_reactor_which_drains(self):
        """An operator's drain request stops the reactor (the service then drains before it closes)."""
        from twisted.internet.testing import MemoryReactorClock

        from appliance.config import ClusterConfig
        from appliance.server.service import SessionServerService

        from .helpers import cluster_ini

        text, _ = cluster_ini()
        reactor = MemoryReactorClock()
        reactor.running = True
        service = SessionServerService(reactor, ClusterConfig.from_string(text), "s1", now=reactor.seconds)
        stopped = []
        reactor.stop = lambda: stopped.append(True)
        service.node.drain_requested("s2")
        reactor.advance(0)
        self.assertEqual(stopped, [True])
