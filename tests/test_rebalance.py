"""
Join and rebalance: the placement decisions of L{appliance.core.rebalance}
(pure, with counts and a fake clock), and the rounds of
L{appliance.server.rebalance} on the simulated cluster (L{tests.sim}): a
restarted node gets its share of backups and primaries, paced, and no
acknowledged write is lost on the way.
"""

from __future__ import annotations

from attrs import frozen
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance import cookie
from appliance.config import ClusterConfig, ConfigError
from appliance.core.rebalance import BACKUP, PRIMARY, Counts, Moved, Pacer, candidates, plan
from appliance.server.errors import NotServing
from appliance.server.rebalance import Rebalancer, decode_counts

from .helpers import cluster_ini
from .test_node import Base, add


@frozen
class Node:
    name: str
    machine: str = ""
    rack: str = "r1"
    site: str = "default"

    def __attrs_post_init__(self):
        if not self.machine:
            object.__setattr__(self, "machine", "m-" + self.name)


FLAT = {n: Node(n) for n in ("a", "b", "j")}


def sids(prefix, n):
    return [f"{prefix}{i:04d}" for i in range(n)]


class PlanTests(SynchronousTestCase):
    def test_joiner_gets_backups_from_both_in_even_parts(self):
        """After a restart (a and b hold 300 primaries each, backed by each other), each moves 100 backups to the joiner: 200 of 600 in all."""
        counts = {"a": Counts(300, 300), "b": Counts(300, 300), "j": Counts(0, 0)}
        moves = plan(FLAT["a"], FLAT, counts, {"b": 300}, lambda peer: sids("a", 300), 1000)
        self.assertEqual({(m.kind, m.source, m.to) for m in moves}, {(BACKUP, "b", "j")})
        self.assertEqual(len(moves), 100)

    def test_chosen_sessions_do_not_depend_on_order(self):
        """The same counts and sessions, listed in another order, give the same moves."""
        counts = {"a": Counts(300, 300), "b": Counts(300, 300), "j": Counts(0, 0)}
        one = plan(FLAT["a"], FLAT, counts, {"b": 300}, lambda peer: sids("a", 300), 1000)
        two = plan(FLAT["a"], FLAT, counts, {"b": 300}, lambda peer: list(reversed(sids("a", 300))), 1000)
        self.assertEqual(sorted(one, key=lambda m: m.sid), sorted(two, key=lambda m: m.sid))
        self.assertEqual(sorted(m.sid for m in one), sids("a", 100))

    def test_budget_bounds_the_moves(self):
        """No more moves than the budget, backups first."""
        counts = {"a": Counts(300, 300), "b": Counts(300, 300), "j": Counts(0, 0)}
        moves = plan(FLAT["a"], FLAT, counts, {"b": 300}, lambda peer: sids("a", 300), 40)
        self.assertEqual(len(moves), 40)
        self.assertEqual({m.kind for m in moves}, {BACKUP})

    def test_primaries_move_only_to_the_node_that_backs_them(self):
        """A primary surplus goes to the joiner, drawn only from the sessions the joiner backs (a swap of roles)."""
        counts = {"a": Counts(300, 200), "b": Counts(300, 200), "j": Counts(0, 200)}
        sessions = {"b": sids("b", 200), "j": sids("j", 100)}
        moves = plan(FLAT["a"], FLAT, counts, {"b": 200, "j": 100}, sessions.__getitem__, 1000)
        primaries = [m for m in moves if m.kind == PRIMARY]
        self.assertEqual(len(primaries), 100)
        self.assertEqual({(m.to, m.source) for m in primaries}, {("j", "j")})
        self.assertTrue(all(m.sid.startswith("j") for m in primaries))

    def test_even_cluster_moves_nothing(self):
        """Counts within the slack of the mean move nothing."""
        counts = {"a": Counts(201, 199), "b": Counts(199, 201), "j": Counts(200, 200)}
        self.assertEqual(plan(FLAT["a"], FLAT, counts, {"b": 100, "j": 101}, lambda p: sids(p, 101), 1000), [])

    def test_a_backup_on_a_nearer_node_moves_to_the_furthest(self):
        """A backup on a node in the same rack moves to the node on the other rack once it is back, even if that one is fuller."""
        nodes = {"a": Node("a"), "b": Node("b"), "far": Node("far", rack="r2")}
        counts = {"a": Counts(10, 0), "b": Counts(0, 10), "far": Counts(0, 50)}
        moves = plan(nodes["a"], nodes, counts, {"b": 10}, lambda p: sids("s", 10), 100)
        self.assertEqual(len(moves), 10)
        self.assertEqual({(m.kind, m.source, m.to) for m in moves}, {(BACKUP, "b", "far")})
        self.assertEqual(candidates(nodes["a"], nodes), ["far"])

    def test_pins_win_over_the_topology_and_the_load(self):
        """A node pinned to one secondary moves no backup off it, and moves those elsewhere onto it."""
        nodes = {"a": Node("a"), "b": Node("b"), "far": Node("far", rack="r2")}
        counts = {"a": Counts(10, 0), "b": Counts(10, 40), "far": Counts(10, 0)}
        self.assertEqual(plan(nodes["a"], nodes, counts, {"b": 10}, lambda p: sids("s", 10), 100, ("b",)), [])
        moved = plan(nodes["a"], nodes, counts, {"far": 10}, lambda p: sids("s", 10), 100, ("b",))
        self.assertEqual({(m.source, m.to) for m in moved}, {("far", "b")})

    def test_nothing_without_a_peer_or_a_budget(self):
        """Alone, or with no budget left, a node plans nothing."""
        counts = {"a": Counts(300, 0)}
        self.assertEqual(plan(FLAT["a"], {"a": FLAT["a"]}, counts, {}, lambda p: [], 100), [])
        counts = {"a": Counts(300, 300), "b": Counts(300, 300), "j": Counts(0, 0)}
        self.assertEqual(plan(FLAT["a"], FLAT, counts, {"b": 300}, lambda p: sids("a", 300), 0), [])

    @settings(max_examples=25, deadline=None)
    @given(st.integers(3, 6), st.integers(50, 400), st.integers(1, 5))
    def test_rounds_converge_within_ten_percent_of_even(self, n, sessions_each, empty):
        """Rounds of every node's plan, applied to a model cluster (a swap for a primary move), bring primaries and backups within 10 % of even, whatever nodes start empty."""
        names = [f"n{i}" for i in range(n)]
        nodes = {name: Node(name) for name in names}
        empty = min(empty, n - 2)
        full = names[empty:]
        # session -> [primary, secondary]
        where = {}
        for i in range(sessions_each * len(full)):
            primary = full[i % len(full)]
            secondary = full[(i + 1 + i // len(full)) % len(full)]
            if secondary == primary:
                secondary = full[(full.index(primary) + 1) % len(full)]
            where[f"s{i:06d}"] = [primary, secondary]
        for _ in range(80):
            counts = {m: Counts(sum(1 for p, _ in where.values() if p == m), sum(1 for _, s in where.values() if s == m)) for m in names}
            moved = 0
            for me in names:
                mine = {}
                for sid, (p, s) in where.items():
                    if p == me:
                        mine.setdefault(s, []).append(sid)
                for move in plan(nodes[me], nodes, counts, {k: len(v) for k, v in mine.items()}, mine.__getitem__, 50):
                    p, s = where[move.sid]
                    where[move.sid] = [p, move.to] if move.kind == BACKUP else [s, p]
                    moved += 1
            if not moved:
                break
        total = len(where)
        for m in names:
            primaries = sum(1 for p, _ in where.values() if p == m)
            backups = sum(1 for _, s in where.values() if s == m)
            for held in (primaries, backups):
                self.assertLessEqual(abs(held - total / n), max(3, 0.1 * total / n), (m, primaries, backups, total))
        self.assertTrue(all(p != s for p, s in where.values()))


class PacerTests(SynchronousTestCase):
    def test_rate_and_burst(self):
        """A pacer grants its rate per second of the clock passed in, never more than its burst, and spent moves are gone."""
        pacer = Pacer(200, 200, now=100.0)
        self.assertEqual(pacer.available(100.0), 0)
        self.assertEqual(pacer.available(100.5), 100)
        pacer.spend(60)
        self.assertEqual(pacer.available(100.5), 40)
        self.assertEqual(pacer.available(110.0), 200)
        self.assertEqual(pacer.available(109.0), 200)

    def test_refuses_nonsense(self):
        """A pacer needs a positive rate and a burst of at least one."""
        self.assertRaises(ValueError, Pacer, 0, 10, 0.0)
        self.assertRaises(ValueError, Pacer, 10, 0.5, 0.0)


class MovedTests(SynchronousTestCase):
    def test_forgets_after_keep(self):
        """A moved session is remembered for keep seconds, then forgotten (moved again, the clock starts again)."""
        moved = Moved(10.0)
        moved.add("x", 0.0)
        moved.add("y", 5.0)
        self.assertTrue(moved.recent("x", 9.9))
        self.assertFalse(moved.recent("x", 10.0))
        moved.add("y", 12.0)
        self.assertTrue(moved.recent("y", 20.0))
        self.assertFalse(moved.recent("y", 22.0))
        self.assertEqual(len(moved), 0)


class CountsTests(SynchronousTestCase):
    def test_answers_are_validated(self):
        """A peer's counts are two whole numbers; anything else counts as no answer."""
        self.assertEqual(decode_counts([3, 4]), Counts(3, 4))
        for bad in (None, [1], [1, 2, 3], [-1, 2], [1.5, 2], ["1", 2], [True, 2], "12"):
            self.assertIsNone(decode_counts(bad), bad)


class ConfigTests(SynchronousTestCase):
    def test_rate_is_read_and_checked(self):
        """rebalance_rate takes a rate per second (0: off, default 200/s); a bad value names file, section and key."""
        text, _ = cluster_ini()
        self.assertEqual(ClusterConfig.from_string(text).cluster.rebalance_rate, 200.0)
        text, _ = cluster_ini(extra="rebalance_rate = 50/s")
        self.assertEqual(ClusterConfig.from_string(text).cluster.rebalance_rate, 50.0)
        text, _ = cluster_ini(extra="rebalance_rate = 0")
        self.assertEqual(ClusterConfig.from_string(text).cluster.rebalance_rate, 0.0)
        text, _ = cluster_ini(extra="rebalance_rate = fast")
        e = self.assertRaises(ConfigError, ClusterConfig.from_string, text)
        self.assertIn("[cluster]", str(e))
        self.assertIn("rebalance_rate", str(e))


class RoundTests(Base):
    def spread(self, n=30):
        routes = []
        for i in range(n):
            routes.append(self.start((f"i{i}",), on=("s1", "s2", "s3")[i % 3]))
        return routes

    def counts(self):
        s = self.s
        return {name: (sv.node.store.primaries, sv.node.store.backups) for name, sv in s.servers.items() if name not in s.down}

    def rebalancers(self, rate=30.0):
        out = {}
        for name, server in self.s.servers.items():
            if name not in self.s.down:
                out[name] = Rebalancer(server.node, rate)
                out[name].start()
                self.addCleanup(out[name].stop)
        return out

    def restart(self, name="s3"):
        s = self.s
        s.run(1.0)
        s.kill(name)
        s.run(3 * s.settings.lease_time)
        s.restart(name)
        s.settle()
        self.assertEqual(self.counts()[name], (0, 0))

    def read_all(self, routes):
        """
        Every session read back through its cookie, the balancer's way (its
        primary, then its secondary); returns the carts.
        """
        carts = []
        for route in routes:
            for name in route.candidates():
                result = self.s.request(name, route, lambda data: data.get("cart"))
                if not isinstance(result, Failure):
                    carts.append(result[0].data.get("cart"))
                    break
                result.trap(NotServing)
            else:
                self.fail(f"nobody served {route.sid}")
        return carts

    def copies(self, sid):
        s = self.s
        return [sv.node.store.get(sid) for name, sv in s.servers.items() if name not in s.down and sv.node.store.get(sid)]

    def rebalanced(self, flat=True):
        """
        30 sessions spread over the three nodes, s3 restarted empty, then
        10 seconds of rebalancing; returns the sessions' first cookies.
        """
        self.sim(flat=flat)
        routes = self.spread(30)
        self.restart()
        self.rebalancers()
        self.s.run(10.0)
        return routes

    def test_restarted_node_gets_its_share(self):
        """A restarted node (flat topology) ends with a third of the primaries and of the backups; every session is whole, on two copies."""
        routes = self.rebalanced()
        counts = self.counts()
        for primaries, backups in counts.values():
            self.assertTrue(8 <= primaries <= 12 and 8 <= backups <= 12, counts)
        for route in routes:
            copies = self.copies(route.sid)
            self.assertEqual(len(copies), 2, [(c.primary, c.secondary, c.epoch, c.version, c.primary_inc) for c in copies])
            self.assertEqual(len({(c.epoch, c.version) for c in copies}), 1)
        self.assertEqual(self.read_all(routes), [[f"i{i}"] for i in range(30)])

    def test_moves_are_paced(self):
        """At 4 sessions a second per node, a restarted node gets at most that many from each peer per second."""
        s = self.sim(flat=True)
        self.spread(60)
        self.restart()
        self.rebalancers(rate=4.0)
        for second in range(1, 4):
            s.run(1.0)
            primaries, backups = self.counts()["s3"]
            self.assertLessEqual(primaries + backups, 2 * 4 * second)
        self.assertGreater(sum(self.counts()["s3"]), 0)

    def test_old_cookie_reaches_the_new_primary(self):
        """After its primary moved, a request with the old cookie is declined by the old primary and served by the secondary, now primary, whose cookie names it; writes go on."""
        routes = self.rebalanced()
        s = self.s

        def swapped(route):
            # Its primary moved to s3, and its old primary backs it still.
            owner = s.servers["s3"].node.store.primary_of(route.sid)
            old = owner.secondary if owner is not None else None
            return old in ("s1", "s2") and s.servers[old].node.moved.recent(route.sid, s.servers[old].now())

        moved = [r for r in routes if swapped(r)]
        self.assertTrue(moved)
        sid = moved[0].sid
        old = s.servers["s3"].node.store.get(sid).secondary
        # The cookie its last answer before the move set: the old primary,
        # and its backup then, the new primary.
        route = cookie.Route(sid, old, "s3")
        self.fails(route.primary, route, add("x"), NotServing)
        _, after = self.ok("s3", route, add("x"))
        self.assertEqual(after.primary, "s3")
        self.assertEqual(self.cart(after.primary, after)[0], [f"i{routes.index(moved[0])}", "x"])

    def test_writes_during_rebalance_are_kept(self):
        """Writes through the balancer's path while sessions move are all kept, in every mode."""
        for mode in ("sync", "async", "batched"):
            s = self.sim(flat=True, replication=mode, extra="batch_count = 5\nbatch_interval = 1s" if mode == "batched" else "")
            routes = self.spread(24)
            self.restart()
            self.rebalancers(rate=6.0)
            expected = [[f"i{i}"] for i in range(24)]
            for step in range(12):
                for i, route in enumerate(routes):
                    for name in route.candidates():
                        result = s.request(name, route, add(f"w{step}"))
                        if not isinstance(result, Failure):
                            if result[1].cookie is not None:
                                routes[i] = cookie.decode(result[1].cookie, s.config.node_names)
                            expected[i].append(f"w{step}")
                            break
                        result.trap(NotServing)
                s.run(0.5)
            s.run(5.0)
            self.assertEqual(self.read_all(routes), expected, mode)
            self.assertGreater(sum(self.counts()["s3"]), 10, mode)

    def test_a_kill_during_rebalance_keeps_every_history(self):
        """A server killed at any point of a rebalance (the joiner or an old one), with requests sent the balancer's way under the first cookie or the latest, in sync and async: no answer ever shows a session without its first write (no empty session made in its place)."""
        for mode in ("sync", "async"):
            for victim in ("s3", "s1"):
                for kill_at in range(0, 10, 3):
                    for old in (False, True):
                        self.kill_during_rebalance(mode, victim, kill_at, old)

    def kill_during_rebalance(self, mode, victim, kill_at, old):
        s = self.sim(flat=True, replication=mode)
        routes = self.spread(30)
        first = list(routes)
        self.restart()
        self.rebalancers(rate=6.0)
        for step in range(10):
            if step == kill_at:
                s.kill(victim)
            for i in range(30):
                route = first[i] if old else routes[i]
                others = [n for n in ("s1", "s2", "s3") if n not in route.candidates()]
                for name in list(route.candidates()) + others:
                    if name in s.down:
                        continue
                    result = s.request(name, route, add(f"w{step}"))
                    if isinstance(result, Failure):
                        result.trap(NotServing)
                        continue
                    cart = result[0].data["cart"]
                    self.assertEqual(cart[0], f"i{i}", (mode, victim, kill_at, old, step, name, route, cart))
                    if result[1].cookie is not None:
                        routes[i] = cookie.decode(result[1].cookie, s.config.node_names)
                    break
                else:
                    self.fail(f"nobody served {route.sid} ({mode}, {victim} killed at {kill_at})")
            s.run(0.1)

    def test_nothing_moves_to_or_from_a_draining_node(self):
        """A node that drains gets no moves and makes none."""
        s = self.sim(flat=True)
        self.spread(30)
        self.restart()
        s.servers["s3"].node.draining = True
        for name in ("s1", "s2"):
            s.servers[name].node.leaving.peers["s3"] = s.servers["s3"].incarnation
        self.rebalancers()
        s.run(5.0)
        self.assertEqual(self.counts()["s3"], (0, 0))

    def test_topology_is_kept(self):
        """With the far node (another rack) back, backups return to it and the near nodes keep none of each other's."""
        routes = self.rebalanced(flat=False)
        for route in routes:
            for c in self.copies(route.sid):
                if c.primary in ("s1", "s2"):
                    self.assertEqual(c.secondary, "s3")

    def test_nothing_moves_while_a_server_is_down(self):
        """While one server is down nothing moves (failover has the work); once it is back, the spread evens out."""
        s = self.sim(flat=True)
        for i in range(30):
            self.start((f"i{i}",), on="s1")
        s.run(1.0)
        s.kill("s3")
        s.run(3 * s.settings.lease_time)
        self.rebalancers()
        s.run(5.0)
        self.assertEqual(self.counts()["s1"][0], 30)
        s.restart("s3")
        s.settle()
        joined = Rebalancer(s.servers["s3"].node, 30.0)
        joined.start()
        self.addCleanup(joined.stop)
        s.run(10.0)
        self.assertTrue(all(8 <= primaries <= 12 for primaries, _ in self.counts().values()), self.counts())
