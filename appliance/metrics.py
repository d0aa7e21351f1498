"""
Prometheus metrics of this process's services, read at scrape time.

The components count for themselves on their hot paths, with plain ints,
dicts and L{appliance.core.counters.Histogram} bucket arrays; the
collectors here turn those counts into metric families when
C{registry.collect()} runs (a scrape), so a request never touches a
prometheus_client object and a scrape never walks the sessions.  Base
units (seconds, bytes), C{_total} counters, no session ids as labels; the
names and labels are listed in the README (Operations, Metrics).

Every metric of a session server carries its C{node}, and every metric of
a balancer its C{balancer}, so that several in one process (the tests) or
the scrapes of several processes merged (the status page) stay apart.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.web import resource

from appliance.core.counters import Histogram
from appliance.replication.wire import RECORD_KINDS

#: The RCODE names a DNS query is counted under (others by number).
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
#: The record kinds a replication count is reported under, in this order.
KINDS = ("delta", "full", "touch", "removal", "rotate")


def _buckets(histogram: Histogram) -> List:
    return [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]


def _histogram(name: str, doc: str, labels: List[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add(family: HistogramMetricFamily, labels: List[str], histogram: Histogram) -> None:
    family.add_metric(labels, _buckets(histogram), histogram.sum)


class ServerCollector(Collector):
    """
    Sessions, replication, peers, promotions and takeovers of session
    servers (L{appliance.server.service.SessionServerService}).
    """

    def __init__(self, servers: Iterable):
        self.servers = list(servers)

    def collect(self) -> Iterator:
        sessions = GaugeMetricFamily(
            "appliance_sessions", "Session copies held, by role (primary here, or backup).", labels=["node", "role"]
        )
        unprotected = GaugeMetricFamily(
            "appliance_sessions_unprotected", "Primaries here without a secondary.", labels=["node"]
        )
        created = CounterMetricFamily("appliance_sessions_created_total", "Sessions created here.", labels=["node"])
        ended = CounterMetricFamily(
            "appliance_sessions_ended_total",
            "Sessions that ended while primary here, by reason (an id rotated away ends).",
            labels=["node", "reason"],
        )
        size = _histogram("appliance_session_bytes", "Sizes of the session copies held (value bytes).", ["node"])
        records = CounterMetricFamily(
            "appliance_replication_records_sent_total", "Replication records sent, by peer and kind.",
            labels=["node", "peer", "kind"],
        )
        sent = CounterMetricFamily(
            "appliance_replication_bytes_sent_total", "Replication bytes sent, by peer.", labels=["node", "peer"]
        )
        ack = _histogram(
            "appliance_replication_ack_seconds", "Round trips of replication batches, sent to answered.", ["node"]
        )
        window = GaugeMetricFamily(
            "appliance_replication_unreplicated", "Updates queued or sent and not yet acknowledged.", labels=["node"]
        )
        gaps = CounterMetricFamily(
            "appliance_replication_gaps_total", "Records a peer answered with a version gap.", labels=["node", "peer"]
        )
        fenced = CounterMetricFamily(
            "appliance_replication_fenced_total", "Records a newer owner refused (fenced).", labels=["node"]
        )
        resyncs = CounterMetricFamily(
            "appliance_replication_resyncs_total", "Digest comparisons that found copies to send again.",
            labels=["node"],
        )
        up = GaugeMetricFamily("appliance_peer_up", "Whether the link to a peer is up.", labels=["node", "peer"])
        promotions = CounterMetricFamily(
            "appliance_promotions_total", "Backups here promoted to primary.", labels=["node"]
        )
        takeovers = CounterMetricFamily(
            "appliance_takeovers_total", "Sessions taken over by a request, by the copy they came from.",
            labels=["node", "source"],
        )
        for server in self.servers:
            name = server.name
            node = server.node
            store = node.store
            replicator = server.replicator
            sessions.add_metric([name, "primary"], store.primaries)
            sessions.add_metric([name, "backup"], store.backups)
            unprotected.add_metric([name], store.unprotected)
            created.add_metric([name], store.created)
            ended.add_metric([name, "expired"], store.expired_count)
            ended.add_metric([name, "invalidated"], store.invalidated)
            ended.add_metric([name, "rotated"], store.rotated)
            if store.sizes is not None:
                _add(size, [name], store.sizes)
            counts = replicator.counts
            if counts is not None:
                for peer in sorted(server.servers):
                    c = counts.get(peer)
                    by_kind = dict.fromkeys(KINDS, 0)
                    if c is not None:
                        for tag, n in enumerate(c.kinds):
                            if tag:
                                by_kind[RECORD_KINDS[tag]] += n
                    for kind in KINDS:
                        records.add_metric([name, peer, kind], by_kind[kind])
                    sent.add_metric([name, peer], 0 if c is None else c.bytes)
                    gaps.add_metric([name, peer], 0 if c is None else c.gaps)
                _add(ack, [name], replicator.ack)
                fenced.add_metric([name], replicator.fenced)
            window.add_metric([name], replicator.unreplicated())
            resyncs.add_metric([name], node.protection.resyncs)
            for peer, link in sorted(server.links.items()):
                up.add_metric([name, peer], 1 if link.connected else 0)
            promotions.add_metric([name], store.promotions)
            for source in ("primary", "secondary"):
                takeovers.add_metric([name, source], node.takeovers[source])
        yield from (
            sessions, unprotected, created, ended, size, records, sent, ack, window, gaps, fenced, resyncs, up,
            promotions, takeovers,
        )


class MemoryCollector(Collector):
    """
    What the cycle collector's freeze policy of a session server's process
    did (L{appliance.server.collector.Collector}); nothing on PyPy, where
    there is none.
    """

    def __init__(self, policies: Iterable):
        self.policies = [p for p in policies if p.active]

    def collect(self) -> Iterator:
        frozen = GaugeMetricFamily(
            "appliance_gc_frozen_objects", "Objects kept out of full collections (gc.freeze).", labels=["node"]
        )
        freezes = CounterMetricFamily(
            "appliance_gc_freezes_total", "Full collections long enough that their survivors were frozen.",
            labels=["node"],
        )
        thaws = CounterMetricFamily(
            "appliance_gc_thaws_total", "Collections of every object, frozen ones included.", labels=["node"]
        )
        longest = GaugeMetricFamily(
            "appliance_gc_longest_full_seconds", "The longest full collection so far.", labels=["node"]
        )
        for policy in self.policies:
            frozen.add_metric([policy.node], policy.gc.get_freeze_count())
            freezes.add_metric([policy.node], policy.freezes)
            thaws.add_metric([policy.node], policy.thaws)
            longest.add_metric([policy.node], policy.longest)
        yield from (frozen, freezes, thaws, longest)


class BalancerCollector(Collector):
    """
    Requests, retries, server states and request times of balancers
    (L{appliance.balancer.service.BalancerService}, once started).
    """

    def __init__(self, services: Iterable):
        self.services = list(services)

    def collect(self) -> Iterator:
        requests = CounterMetricFamily(
            "appliance_balancer_requests_total",
            'Responses, by server and status code (server "none": the balancer answered itself).',
            labels=["balancer", "server", "code"],
        )
        retries = CounterMetricFamily(
            "appliance_balancer_retries_total", "Requests sent on again after this server failed or declined them.",
            labels=["balancer", "server"],
        )
        up = GaugeMetricFamily(
            "appliance_balancer_server_up", "Whether the balancer sends requests to this server now.",
            labels=["balancer", "server"],
        )
        seconds = _histogram(
            "appliance_balancer_request_seconds", "Time from a request's dispatch to the end of its response.",
            ["balancer"],
        )
        for service in self.services:
            balancer = service.balancer
            if balancer is None:
                continue
            name = service.config.name
            if balancer.requests is not None:
                for (server, code), n in sorted(balancer.requests.items()):
                    requests.add_metric([name, server, str(code)], n)
            retried = balancer.retries
            now = balancer.clock.seconds()
            for server, state in sorted(balancer.nodes.states.items()):
                retries.add_metric([name, server], retried.get(server, 0))
                up.add_metric([name, server], 1 if state.available(now) and not state.silent else 0)
            if balancer.request_seconds is not None:
                _add(seconds, [name], balancer.request_seconds)
        yield from (requests, retries, up, seconds)


class DnsCollector(Collector):
    """
    Queries answered and refused by the DNS responder
    (L{appliance.dns.service.DnsService}).
    """

    def __init__(self, services: Iterable):
        self.services = list(services)

    def collect(self) -> Iterator:
        queries = CounterMetricFamily("appliance_dns_queries_total", "Responses sent, by RCODE.", labels=["rcode"])
        limited = CounterMetricFamily(
            "appliance_dns_rate_limited_total", "UDP queries over the rate limit (dropped or answered truncated)."
        )
        total: Optional[List[int]] = None
        refused = 0
        for service in self.services:
            responder = service.responder
            refused += responder.rate_limited
            if responder.rcodes is not None:
                total = [a + b for a, b in zip(total or [0] * 16, responder.rcodes)]
        if total is not None:
            for code, n in enumerate(total):
                if code in RCODES or n:
                    queries.add_metric([RCODES.get(code, str(code))], n)
        limited.add_metric([], refused)
        yield from (queries, limited)


def registry_for(services: Iterable) -> CollectorRegistry:
    """
    A registry whose collection reads the counts of C{services}, this
    process's running services (session servers, balancers, the DNS
    responder; others are left out).
    """
    from appliance.balancer.service import BalancerService
    from appliance.dns.service import DnsService
    from appliance.server import collector
    from appliance.server.service import SessionServerService

    services = list(services)
    registry = CollectorRegistry(auto_describe=False)
    for kind, collector in (
        (SessionServerService, ServerCollector),
        (collector.Collector, MemoryCollector),
        (BalancerService, BalancerCollector),
        (DnsService, DnsCollector),
    ):
        mine = [s for s in services if isinstance(s, kind)]
        if mine:
            registry.register(collector(mine))
    return registry


class MetricsResource(resource.Resource):
    """
    C{/metrics} of an admin listener: the Prometheus text format of
    L{registry_for} C{services}.
    """

    isLeaf = True

    def __init__(self, services: Iterable):
        super().__init__()
        self.registry = registry_for(services)

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)
