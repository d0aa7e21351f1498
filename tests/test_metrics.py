"""
The counts behind /metrics, after known traffic: the store's session
counts and size histogram, the replicator's records, bytes, gaps, fencings
and round trips, promotions, takeovers and resyncs on a simulated cluster,
the balancer's requests, retries and times, the DNS responder's RCODEs and
rate limiting, and the Prometheus text a registry of real services gives.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from appliance.balancer.frontend import FrontendFactory
from appliance.balancer.service import BalancerService
from appliance.config import ClusterConfig, ConfigError
from appliance.core.counters import BYTES, Histogram
from appliance.core.session import Changes, Delta, Full, Remove, Rotate, Touch
from appliance.core.store import Result, Store
from appliance.dns.responder import Responder
from appliance.dns.rrl import RateLimiter
from appliance.dns.service import DnsService
from appliance.metrics import registry_for
from appliance.replication import wire
from appliance.replication.replicator import Replicator
from appliance.server.service import SessionServerService

from .helpers import cluster_ini
from .test_balancer_proxy import OK, SID, Harness
from .test_dns_support import query, zone
from .test_node import Base, add

#: Every metric name of issue 13 (and the resyncs), as the text format shows them.
NAMES = {
    "appliance_sessions",
    "appliance_sessions_unprotected",
    "appliance_sessions_created_total",
    "appliance_sessions_ended_total",
    "appliance_session_bytes",
    "appliance_replication_records_sent_total",
    "appliance_replication_bytes_sent_total",
    "appliance_replication_ack_seconds",
    "appliance_replication_unreplicated",
    "appliance_replication_gaps_total",
    "appliance_replication_fenced_total",
    "appliance_replication_resyncs_total",
    "appliance_peer_up",
    "appliance_promotions_total",
    "appliance_takeovers_total",
    "appliance_balancer_requests_total",
    "appliance_balancer_retries_total",
    "appliance_balancer_server_up",
    "appliance_balancer_request_seconds",
    "appliance_dns_queries_total",
    "appliance_dns_rate_limited_total",
}


def changes(**values) -> Changes:
    return Changes({k: wire_value(v) for k, v in values.items()})


def wire_value(v: str) -> bytes:
    return ('"' + v + '"').encode("ascii")


def recount(store: Store) -> list:
    """
    The size histogram's buckets counted again from every copy.
    """
    h = Histogram(BYTES)
    for s in store.sessions.values():
        h.observe(s.size)
    return h.counts


def samples(text: str) -> dict:
    """
    {(sample name, sorted labels): value} of a Prometheus text.
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class HistogramTests(SynchronousTestCase):
    def test_buckets_are_inclusive_and_cumulative(self):
        """A value equal to a bound counts under it; the buckets add up to the last, infinite one."""
        h = Histogram((1, 10))
        for v in (1, 5, 10, 11):
            h.observe(v)
        h.forget(5)
        self.assertEqual(h.cumulative(), [(1, 1), (10, 2), (float("inf"), 3)])
        self.assertEqual(h.sum, 22)


class StoreCountTests(SynchronousTestCase):
    def test_roles_and_unprotected(self):
        """Primaries, backups and primaries without a secondary are counted through creation, re-protection, backups and promotion."""
        store = Store("s1", 60.0)
        store.create("a" * 22, changes(k="x"), "s2", 0.0)
        bare = store.create("b" * 22, changes(k="x"), None, 0.0)
        self.assertEqual((store.primaries, store.backups, store.unprotected), (2, 0, 1))
        store.set_secondary(store.get(bare.sid), "s3", 0.0)
        self.assertEqual(store.unprotected, 0)
        store.apply(Full("c" * 22, 1, 1, "s2", "s1", 60.0, 0.0, {"k": b"1"}), 0.0)
        self.assertEqual((store.primaries, store.backups), (2, 1))
        store.promote("c" * 22, None, 1.0)
        self.assertEqual((store.primaries, store.backups, store.unprotected, store.promotions), (3, 0, 1, 1))

    def test_ended_by_reason(self):
        """Creation, invalidation, rotation and expiry are counted once, by the primary: an expired backup is not."""
        store = Store("s1", 10.0)
        for c in "abc":
            store.create(c * 22, changes(k="x"), "s2", 0.0)
        store.apply(Full("d" * 22, 1, 1, "s2", "s1", 10.0, 0.0, {"k": b"1"}), 0.0)
        store.remove("a" * 22)
        store.rotate(store.get("b" * 22), "e" * 22, 0.0)
        self.assertEqual(len(store.expired(100.0)), 3)
        self.assertEqual(
            (store.created, store.invalidated, store.rotated, store.expired_count), (3, 1, 1, 2)
        )

    def test_size_histogram_follows_every_change(self):
        """Commits, deltas applied, full states, removal and expiry keep the size histogram equal to a recount."""
        store = Store("s1", 10.0)
        s = store.get(store.create("a" * 22, changes(k="x"), "s2", 0.0).sid)
        store.commit(s, changes(k="y" * 300), 1.0)
        store.apply(Full("b" * 22, 1, 1, "s2", "s1", 10.0, 0.0, {"k": b"1"}), 0.0)
        store.apply(Delta("b" * 22, 1, 2, "s2", "s1", {"big": b"2" * 5000}, ("k",)), 0.0)
        self.assertEqual(store.sizes.counts, recount(store))
        self.assertEqual(store.sizes.sum, 302 + 5000)
        store.remove("a" * 22)
        store.expired(100.0)
        self.assertEqual(store.sizes.counts, [0] * (len(BYTES) + 1))
        self.assertEqual(store.sizes.sum, 0)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["create", "commit", "full", "delta", "remove", "rotate", "promote", "expire"]),
                st.integers(0, 4),
                st.integers(0, 3000),
            ),
            max_size=40,
        )
    )
    def test_counts_match_a_recount(self, ops):
        """Any sequence of operations leaves the role counts and the size histogram equal to a walk over the copies."""
        store = Store("s1", 10.0)
        now = 0.0
        fresh = iter(f"{i:022d}" for i in range(10_000))
        for op, i, n in ops:
            now += 1.0
            sid = f"{i:022d}"
            s = store.get(sid)
            if op == "create" and s is None and sid not in store.tombstones:
                store.create(sid, changes(k="x" * n), "s2" if n % 2 else None, now)
            elif op == "commit" and s is not None and store.mine(s):
                store.commit(s, changes(k="y" * n), now)
            elif op == "full":
                store.apply(Full(sid, 5, 1, "s2", "s1", 10.0, 0.0, {"k": b"z" * n}), now)
            elif op == "delta" and s is not None and not store.mine(s):
                store.apply(Delta(sid, s.epoch, s.version + 1, s.primary, s.secondary, {"j": b"q" * n}, ()), now)
            elif op == "remove":
                store.remove(sid)
            elif op == "rotate" and s is not None and store.mine(s):
                new = next(fresh)
                if new not in store.sessions and new not in store.tombstones:
                    store.rotate(s, new, now)
            elif op == "promote" and s is not None and not store.mine(s):
                store.promote(sid, None if n % 2 else "s3", now)
            elif op == "expire":
                store.expired(now + n / 100)
        mine = [s for s in store.sessions.values() if store.mine(s)]
        self.assertEqual(store.primaries, len(mine))
        self.assertEqual(store.unprotected, sum(1 for s in mine if s.secondary is None))
        self.assertEqual(store.sizes.counts, recount(store))
        self.assertEqual(store.sizes.sum, sum(s.size for s in store.sessions.values()))

    def test_no_histogram_without_counting(self):
        """With counting off there is no size histogram; the session counts stay."""
        store = Store("s1", 10.0, counting=False)
        store.create("a" * 22, changes(k="x"), None, 0.0)
        self.assertIsNone(store.sizes)
        self.assertEqual((store.primaries, store.unprotected, store.created), (1, 1, 1))


class ReplicatorCountTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.calls = []
        text, _ = cluster_ini(("s1", "s2"))
        self.settings = ClusterConfig.from_string(text).cluster

    def call(self, peer, method, chunks):
        d = defer.Deferred()
        self.calls.append((peer, b"".join(chunks), d))
        return d

    def test_records_bytes_gaps_fencings_and_round_trip(self):
        """One batch of every kind is counted by kind and bytes; its answer's gaps and fencings and its round trip too."""
        r = Replicator(self.clock, self.settings, self.call, lambda: 600)
        sid = "a" * 22
        records = [
            Delta(sid, 1, 2, "s1", "s2", {"k": b"1"}, ()),
            Full(sid, 1, 2, "s1", "s2", 60.0, 0.0, {"k": b"1"}),
            Touch(sid, 1),
            Remove(sid, 1),
            Rotate("b" * 22, sid, 1, 2, "s1", "s2"),
            Touch(sid, 1),
        ]
        for record in records:
            r.send("s2", record)
        self.clock.advance(0)
        [(peer, payload, d)] = self.calls
        self.assertEqual(r.unreplicated(), 6)
        self.clock.advance(0.003)
        d.callback(wire.encode_results([Result.OK, Result.GAP, Result.FENCED, Result.OK, Result.GAP, Result.OK]))
        c = r.counts["s2"]
        by_kind = {wire.RECORD_KINDS[tag]: n for tag, n in enumerate(c.kinds) if n}
        self.assertEqual(by_kind, {"delta": 1, "full": 1, "touch": 2, "removal": 1, "rotate": 1})
        self.assertEqual((c.bytes, c.gaps, r.fenced), (len(payload), 2, 1))
        self.assertEqual(dict(r.ack.cumulative())[0.0025], 0)
        self.assertEqual(dict(r.ack.cumulative())[0.005], 1)
        self.assertEqual(r.unreplicated(), 0)

    def test_nothing_counted_with_metrics_off(self):
        """With [cluster] metrics = no the replicator keeps no per-peer counts."""
        text, _ = cluster_ini(("s1", "s2"), extra="metrics = no\n")
        settings = ClusterConfig.from_string(text).cluster
        r = Replicator(self.clock, settings, self.call, lambda: 600)
        r.send("s2", Touch("a" * 22, 1))
        self.clock.advance(0)
        self.calls[0][2].callback(wire.encode_results([Result.GAP]))
        self.assertIsNone(r.counts)
        self.assertEqual(r.ack.counts, [0] * len(r.ack.counts))


class ClusterCountTests(Base):
    def test_takeover_from_the_primary(self):
        """A request on a third server takes the session from its live primary: one takeover from a primary."""
        self.sim()
        route = self.start(["apple"])
        self.ok("s2", route, add("pear"))
        self.assertEqual(self.s.servers["s2"].node.takeovers, {"primary": 1, "secondary": 0})
        self.assertEqual(self.s.servers["s1"].node.store.created, 1)

    def test_promotion_on_the_secondary(self):
        """With the primary dead, a request on the secondary promotes its copy: one promotion, no takeover."""
        self.sim()
        route = self.start(["apple"])
        self.s.kill("s1")
        self.ok(route.secondary, route, add("pear"))
        node = self.s.servers[route.secondary].node
        self.assertEqual((node.store.promotions, sum(node.takeovers.values())), (1, 0))

    def test_takeover_after_the_primary_died(self):
        """A third server takes a session of a dead primary over once, from the secondary or, if that promoted itself first, from it as primary."""
        self.sim()
        route = self.start(["apple"])
        self.s.kill("s1")
        third = ({"s2", "s3"} - {route.secondary}).pop()
        self.ok(third, route, add("pear"))
        promoted = self.s.servers[route.secondary].node.store.promotions
        expected = {"primary": 1, "secondary": 0} if promoted else {"primary": 0, "secondary": 1}
        self.assertEqual(self.s.servers[third].node.takeovers, expected)

    def test_resync_counted_once_per_comparison_that_resends(self):
        """A digest that finds a stale backup counts one resync; one that finds none counts nothing."""
        self.sim()
        route = self.start(["apple"])
        s1 = self.s.servers["s1"].node
        self.assertEqual(self.successResultOf(s1.resync(route.secondary)), 0)
        self.s.servers[route.secondary].node.store.get(route.sid).version = 0
        self.assertEqual(self.successResultOf(s1.resync(route.secondary)), 1)
        self.assertEqual(s1.protection.resyncs, 1)


class BalancerCountTests(SynchronousTestCase):
    def test_requests_by_server_and_code_and_times(self):
        """Responses are counted by server and status, with their times; a request no server takes is counted as the balancer's own."""
        h = Harness(self)
        h.send(b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: APPSESSION=" + SID.encode() + b"!s1!s2\r\n\r\n")
        port, proto, transport = h.accept()
        h.reactor.advance(0.02)
        proto.dataReceived(OK)
        self.assertEqual(h.balancer.requests, {("s1", 200): 1})
        self.assertEqual(dict(h.balancer.request_seconds.cumulative())[0.01], 0)
        self.assertEqual(dict(h.balancer.request_seconds.cumulative())[0.025], 1)

    def test_retries_by_the_server_that_failed(self):
        """A refused connection sends the request on to the secondary, counted as a retry of the server that refused."""
        h = Harness(self)
        h.send(b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: APPSESSION=" + SID.encode() + b"!s1!s2\r\n\r\n")
        h.refuse()
        port, proto, transport = h.accept()
        proto.dataReceived(OK)
        self.assertEqual(h.balancer.retries, {"s1": 1})
        self.assertEqual((port, h.balancer.requests), (9002, {("s2", 200): 1}))

    def test_balancers_own_answers(self):
        """When every server refuses, the 503 is counted under server "none"."""
        h = Harness(self)
        h.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(3):
            h.refuse()
        self.assertEqual(h.balancer.requests, {("none", 503): 1})
        self.assertEqual(sum(h.balancer.retries.values()), 2)


class DnsCountTests(SynchronousTestCase):
    def test_rcodes_and_rate_limited(self):
        """Answers are counted by RCODE, over UDP and TCP; queries over the limit are counted apart."""
        r = Responder(zone(), RateLimiter(rate=3, slip=2))
        r.udp(query("app.cluster.test"), "10.0.0.1", 0)
        r.udp(query("nothing.cluster.test"), "10.0.0.1", 0)
        r.tcp(query("example.org"))
        for _ in range(4):
            r.udp(query("app.cluster.test"), "10.0.0.1", 0)
        self.assertEqual((r.rcodes[0], r.rcodes[3], r.rcodes[5]), (2, 1, 1))
        self.assertEqual(r.rate_limited, 3)


class RegistryTests(SynchronousTestCase):
    def services(self, extra=""):
        balancer = "\n[balancer:lb1]\nlisten = 127.0.0.1:9080\n"
        dns = "\n[dns]\nlisten = 127.0.0.1:9053\nzone = cluster.test\n"
        text, _ = cluster_ini(("s1", "s2"), extra=extra, balancer=balancer, dns=dns)
        cluster = ClusterConfig.from_string(text)
        reactor = MemoryReactorClock()
        server = SessionServerService(reactor, cluster, "s1")
        lb = BalancerService(reactor, cluster, cluster.balancers[0])
        lb.startService()
        self.addCleanup(lb.stopService)
        dns_service = DnsService(reactor, cluster, check=lambda front: defer.succeed(True))
        return server, lb, dns_service

    def test_every_name_with_values(self):
        """A registry of a server, a balancer and a responder shows every metric of the issue with the counts kept."""
        server, lb, dns_service = self.services()
        store = server.node.store
        store.create("a" * 22, changes(k="x" * 1000), "s2", 0.0)
        store.create("b" * 22, changes(k="x"), None, 0.0)
        server.replicator.send("s2", Touch("a" * 22, 1))
        dns_service.responder.tcp(query("app.cluster.test"))
        proto = FrontendFactory(lb.balancer, False).buildProtocol(None)
        lb.balancer.retries["s2"] = 4
        text = generate_latest(registry_for([server, lb, dns_service, proto])).decode("utf-8")
        names = {f.name for f in text_string_to_metric_families(text)}
        # The parser gives counters without their _total suffix.
        self.assertEqual({n[: -len("_total")] if n.endswith("_total") else n for n in NAMES}, names)
        got = samples(text)
        self.assertEqual(got[("appliance_sessions", (("node", "s1"), ("role", "primary")))], 2)
        self.assertEqual(got[("appliance_sessions_unprotected", (("node", "s1"),))], 1)
        self.assertEqual(got[("appliance_sessions_created_total", (("node", "s1"),))], 2)
        self.assertEqual(got[("appliance_session_bytes_bucket", (("le", "256.0"), ("node", "s1")))], 1)
        self.assertEqual(got[("appliance_session_bytes_bucket", (("le", "1024.0"), ("node", "s1")))], 2)
        self.assertEqual(got[("appliance_session_bytes_sum", (("node", "s1"),))], 1005)
        self.assertEqual(got[("appliance_replication_unreplicated", (("node", "s1"),))], 1)
        self.assertEqual(
            got[("appliance_replication_records_sent_total", (("kind", "delta"), ("node", "s1"), ("peer", "s2")))], 0
        )
        self.assertEqual(got[("appliance_balancer_retries_total", (("balancer", "lb1"), ("server", "s2")))], 4)
        self.assertEqual(got[("appliance_balancer_server_up", (("balancer", "lb1"), ("server", "s1")))], 1)
        self.assertEqual(got[("appliance_dns_queries_total", (("rcode", "NOERROR"),))], 1)
        self.assertEqual(got[("appliance_dns_rate_limited_total", ())], 0)

    def test_no_session_ids_in_labels(self):
        """No label value of any sample is a session id."""
        server, lb, dns_service = self.services()
        sid = "c" * 22
        server.node.store.create(sid, changes(k="x"), "s2", 0.0)
        text = generate_latest(registry_for([server, lb, dns_service])).decode("utf-8")
        self.assertNotIn(sid, text)
        self.assertIn("appliance_sessions", text)

    def test_metrics_off(self):
        """With metrics = no the per-request families are empty and the session counts stay."""
        server, lb, dns_service = self.services("metrics = no\n")
        server.node.store.create("a" * 22, changes(k="x"), "s2", 0.0)
        got = samples(generate_latest(registry_for([server, lb, dns_service])).decode("utf-8"))
        names = {name for name, _ in got}
        self.assertIn("appliance_sessions", names)
        for gone in ("appliance_session_bytes_count", "appliance_balancer_request_seconds_count",
                     "appliance_replication_records_sent_total", "appliance_dns_queries_total"):
            self.assertNotIn(gone, names)


class ConfigTests(SynchronousTestCase):
    def test_metrics_is_yes_or_no(self):
        """metrics = takes yes or no; anything else names the file, section and key."""
        text, _ = cluster_ini(("s1", "s2"), extra="metrics = sometimes\n")
        with self.assertRaises(ConfigError) as caught:
            ClusterConfig.from_string(text, "test.ini")
        self.assertEqual((caught.exception.section, caught.exception.key), ("cluster", "metrics"))
        self.assertTrue(ClusterConfig.from_string(cluster_ini(("s1", "s2"))[0]).cluster.metrics)
