"""
The admin status: counters read from the metrics registry (absent: "-"),
the hour's ring of snapshots, each kind of service's part, and the cluster
view that asks the other admin listeners (real sockets on loopback).
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet import defer, reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from appliance.admin import counters
from appliance.admin.listener import AdminService, build_root, status_of
from appliance.balancer.service import BalancerService
from appliance.config import ClusterConfig
from appliance.core.session import Changes
from appliance.dns.service import DnsService
from appliance.server.service import SessionServerService

from .helpers import free_ports
from .test_admin import config as admin_config

SID = "A" * 22


def config(admin: str = "", extra: str = "") -> ClusterConfig:
    """
    The admin tests' cluster (two nodes, a balancer, DNS) with C{admin} in
    [node:s1] and C{extra} in [cluster].
    """
    return admin_config(cluster=extra, s1=admin)


def registry():
    reg = CollectorRegistry()
    c = {
        "promotions": Counter("appliance_promotions_total", "x", registry=reg),
        "takeovers": Counter("appliance_takeovers_total", "x", ["source"], registry=reg),
        "requests": Counter("appliance_balancer_requests_total", "x", ["server", "code"], registry=reg),
        "unprotected": Gauge("appliance_sessions_unprotected", "x", registry=reg),
    }
    return reg, c


class CounterTests(SynchronousTestCase):
    def test_snapshot(self):
        """A snapshot holds every counter and gauge sample by name and labels, no _created samples."""
        reg, c = registry()
        c["takeovers"].labels(source="primary").inc(2)
        c["takeovers"].labels(source="secondary").inc(3)
        taken = counters.snapshot(reg)
        self.assertEqual(counters.total(taken, "appliance_takeovers_total"), 5.0)
        self.assertEqual(counters.total(taken, "appliance_takeovers_total", source="primary"), 2.0)
        self.assertEqual(counters.total(taken, "appliance_promotions_total"), 0.0)
        self.assertIsNone(counters.total(taken, "appliance_dns_queries_total"))
        self.assertFalse([k for k in taken if k[0].endswith("_created")])
        self.assertEqual(counters.snapshot(None), {})

    def test_by_label(self):
        """Samples sum by the values of the labels asked for."""
        reg, c = registry()
        c["requests"].labels(server="s1", code="200").inc(4)
        c["requests"].labels(server="s2", code="200").inc(1)
        c["requests"].labels(server="s2", code="503").inc(2)
        by_code = counters.by_label(counters.snapshot(reg), "appliance_balancer_requests_total", "code")
        self.assertEqual(by_code, {("200",): 5.0, ("503",): 2.0})

    def test_increase(self):
        """Growth is the difference; a counter that went down was reset and grew by what it holds."""
        then = {("a", ()): 5.0, ("b", ()): 10.0}
        now = {("a", ()): 8.0, ("b", ()): 3.0, ("c", ()): 1.0}
        self.assertEqual(counters.increase(now, then), {("a", ()): 3.0, ("b", ()): 3.0, ("c", ()): 1.0})

    def test_last_hour(self):
        """The hour's ring keeps a snapshot a minute: what happened over an hour ago is not counted."""
        history = counters.History()
        key = ("appliance_promotions_total", ())
        for minute in range(0, 91):
            history.offer(minute * 60.0, {key: float(minute)})
            history.offer(minute * 60.0 + 30, {key: float(minute)})
        self.assertEqual(history.last_hour({key: 100.0}), {key: 100.0 - 30.0})
        self.assertEqual(counters.History().last_hour({key: 4.0}), {key: 4.0})

    def test_rates(self):
        """Rates per second come from a snapshot at least a second old, and none before there is one."""
        history = counters.History()
        key = ("appliance_dns_queries_total", ())
        history.offer(100.0, {key: 10.0})
        self.assertIsNone(history.rates(100.5, {key: 20.0}))
        self.assertEqual(history.rates(104.0, {key: 30.0}), {key: 5.0})


class ServiceStatusTests(SynchronousTestCase):
    def status(self, root):
        return status_of(root)

    def test_node(self):
        """A node shows its sessions by role and its hour's counts; a metric that is absent is None ("-")."""
        cluster = config()
        clock = MemoryReactorClock()
        server = SessionServerService(clock, cluster, "s1", now=clock.seconds)
        server.node.store.create(SID, Changes({"a": b"1"}), "s2", 0.0)
        server.node.store.create("B" * 22, Changes({"a": b"1"}), None, 0.0)
        reg, c = registry()
        c["promotions"].inc(3)
        c["unprotected"].set(1)
        root = build_root(clock, cluster, "node:s1", [server])
        root.registry = reg
        status = self.status(root)
        self.assertEqual(
            {k: status[k] for k in ("section", "kind", "name", "sessions", "primaries", "backups", "unprotected")},
            {"section": "node:s1", "kind": "node", "name": "s1", "sessions": 2, "primaries": 2, "backups": 0,
             "unprotected": 1},
        )
        self.assertEqual(status["last_hour"], {"failovers": 3, "takeovers": 0, "fencings": None, "resyncs": None})
        self.assertEqual(status["state"], "isolated")
        server.node.draining = True
        self.assertEqual(self.status(root)["state"], "draining")

    def test_node_hour(self):
        """A node's hour counts leave out what happened before the oldest minute kept."""
        cluster = config()
        clock = MemoryReactorClock()
        server = SessionServerService(clock, cluster, "s1", now=clock.seconds)
        reg, c = registry()
        root = build_root(clock, cluster, "node:s1", [server])
        root.registry = reg
        c["promotions"].inc(5)
        root.sample()
        for _ in range(70):
            clock.advance(60)
            root.sample()
        c["promotions"].inc(2)
        self.assertEqual(self.status(root)["last_hour"]["failovers"], 2)

    def test_node_without_metrics(self):
        """Without a metrics registry every count is None."""
        cluster = config()
        clock = MemoryReactorClock()
        root = build_root(clock, cluster, "node:s1", [SessionServerService(clock, cluster, "s1", now=clock.seconds)])
        root.registry = None
        status = self.status(root)
        self.assertEqual(set(status["last_hour"].values()), {None})
        self.assertIsNone(status["unprotected"])
        self.assertFalse(status["counters"])

    def test_balancer(self):
        """A balancer shows requests per second by status, its error rate and each server's state."""
        cluster = config()
        clock = MemoryReactorClock()
        service = BalancerService(clock, cluster, cluster.balancers[0], now=clock.seconds)
        service.startService()
        self.addCleanup(service.stopService)
        reg, c = registry()
        root = build_root(clock, cluster, "balancer:lb1", [service])
        root.registry = reg
        self.assertIsNone(self.status(root)["requests_per_second"])
        c["requests"].labels(server="s1", code="200").inc(30)
        c["requests"].labels(server="s2", code="503").inc(10)
        service.balancer.nodes.refused("s2", clock.seconds())
        clock.advance(2)
        status = self.status(root)
        self.assertEqual(status["requests_per_second"], 20.0)
        self.assertEqual(status["by_status"], {"200": 15.0, "503": 5.0})
        self.assertEqual(status["error_rate"], 0.25)
        self.assertEqual(status["servers"], {"s1": "up", "s2": "down"})
        self.assertEqual(status["sticky_entries"], 0)

    def test_dns(self):
        """The DNS responder shows the addresses it answers with now."""
        cluster = config()
        clock = MemoryReactorClock()
        service = DnsService(clock, cluster, check=lambda front: defer.succeed(True))
        root = build_root(clock, cluster, "dns", [service])
        status = self.status(root)
        self.assertEqual((status["kind"], status["answer"]), ("dns", ["127.0.0.1"]))


class LocalViewTests(SynchronousTestCase):
    def test_every_answer_local(self):
        """With this listener the only admin address, each request gets a view of its own (a round ends at once)."""
        from .memory_http import exchange, request, responses

        from appliance.admin.auth import Guard
        from appliance.admin.listener import AdminSite

        cluster = config("admin = 9721")
        clock = MemoryReactorClock()
        root = build_root(clock, cluster, "node:s1", [SessionServerService(clock, cluster, "s1", now=clock.seconds)])
        site = AdminSite(root, Guard.of(cluster))
        for _ in range(3):
            [(code, _, body)] = responses(exchange(site, request("GET", "/cluster.json")))
            self.assertEqual((code, json.loads(body)["sections"][0]["section"]), (200, "node:s1"))


def get(url: bytes, headers=None):
    d = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)).request(b"GET", url, headers)
    return d.addCallback(lambda r: readBody(r).addCallback(lambda body: (r.code, json.loads(body))))


class ClusterViewTests(TestCase):
    timeout = 20

    def start(self, cluster, section, services=()):
        address = dict(cluster.admins())[section]
        admin = AdminService(reactor, cluster, section, address, list(services))
        admin.startService()
        self.addCleanup(admin.stopService)
        return admin

    @defer.inlineCallbacks
    def test_view(self):
        """The cluster view has every section: those that answer with their status, a silent one down."""
        ports = free_ports(4)
        cluster = config(
            f"admin = {ports[2]}",
            f"admin = {ports[0]}\nadmin_token = a-token-of-16-chars-or-more\n",
        )
        self.start(cluster, "cluster")
        self.start(cluster, "node:s1", [SessionServerService(reactor, cluster, "s1")])
        from twisted.web.http_headers import Headers

        headers = Headers({b"authorization": [b"Bearer a-token-of-16-chars-or-more"]})
        code, view = yield get(f"http://127.0.0.1:{ports[0]}/cluster.json".encode(), headers)
        self.assertEqual(code, 200)
        by_section = {s["section"]: s for s in view["sections"]}
        self.assertEqual(list(by_section), ["node:s1", "node:s2", "balancer:lb1", "dns", "cluster"])
        self.assertEqual(by_section["node:s1"]["kind"], "node")
        self.assertEqual(by_section["node:s1"]["state"], "isolated")
        self.assertEqual(by_section["cluster"]["kind"], "supervisor")
        self.assertEqual(by_section["node:s2"]["state"], "unknown")
        self.assertEqual(by_section["balancer:lb1"]["state"], "unknown")
        self.assertEqual(view["asked_by"], "cluster")

    @defer.inlineCallbacks
    def test_down(self):
        """A configured admin listener that does not answer is shown down, with why."""
        ports = free_ports(2)
        cluster = config(f"admin = {ports[1]}", f"admin = {ports[0]}\n")
        self.start(cluster, "cluster")
        code, view = yield get(f"http://127.0.0.1:{ports[0]}/cluster.json".encode())
        [s1] = [s for s in view["sections"] if s["section"] == "node:s1"]
        self.assertEqual((s1["state"], s1["kind"], s1["name"]), ("down", "node", "s1"))
        self.assertIn("refused", s1["error"].lower())

    @defer.inlineCallbacks
    def test_oversized_answer(self):
        """A peer that answers more than MAX_ANSWER bytes is shown down and the rest of its answer is not read."""
        from twisted.web import resource, server

        from appliance.admin import cluster as cluster_view

        class Flood(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                return b"{" + b" " * (cluster_view.MAX_ANSWER + 1) + b"}"

        port = reactor.listenTCP(0, server.Site(Flood()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        cluster = config()
        peers = cluster_view.Peers(reactor, cluster)
        from appliance.config import Address

        answer = yield peers.ask("node:s1", Address("127.0.0.1", port.getHost().port))
        self.assertEqual(answer["state"], "down")
        self.assertIn("more than", answer["error"])
        small = yield peers.call(Address("127.0.0.1", port.getHost().port), b"GET", "/", timeout=5).addErrback(
            lambda f: f.trap(cluster_view.AnswerTooLarge) and "refused")
        self.assertEqual(small, "refused")
        # Let the cut connections finish closing, then drop what the pool kept.
        yield task.deferLater(reactor, 0.1, lambda: None)
        yield peers.close()

