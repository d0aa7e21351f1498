"""
The balancer role: listeners, shared state, timers.

C{BalancerService(reactor, cluster, config)} is the entry point; it listens
on C{config.listen} (and C{config.https} with TLS) when started, and stops
listening and closes every connection when stopped.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from appliance.config import Address, BalancerConfig, ClusterConfig
from appliance.cookie import Route, session_cookie
from appliance.core.counters import SECONDS, Histogram
from appliance.listen import listen_tcp

from .backend import BackendPool
from .framing import Limits, RequestHead
from .frontend import FrontendFactory, FrontendProtocol
from .health import HealthChecker
from .policy import Nodes, NodeState, StickyTable, make_policy, plan_plugin, plan_sticky, quick_pick
from .ratelimit import NewSessionLimit


# Cookie headers longer than this are read each time rather than kept.
_MAX_KEPT_HEADER = 512


class Balancer:
    """
    What every connection of one balancer shares: configuration, server
    state, the policy, the sticky table and the connection pool.

    And the counts behind the metrics: L{requests} by (server, status)
    (server L{frontend.LOCAL} for the answers the balancer gives itself), L{retries}
    by the server that failed or declined a request, and the histogram of
    request times (L{request_seconds}); without C{[cluster] metrics} only
    the retries, which are rare.
    """

    log = Logger()

    def __init__(self, clock, cluster: ClusterConfig, config: BalancerConfig):
        self.clock = clock
        self.cluster = cluster
        self.config = config
        self.addresses: Dict[str, Address] = {n.name: n.http for n in cluster.nodes}
        self.node_names = frozenset(self.addresses)
        self.cookie_bytes = cluster.cluster.cookie.encode("ascii")
        self.sticky = config.mode == "sticky"
        self.limits = Limits(config.max_header_bytes, config.max_headers, config.max_body_bytes)
        self.nodes = Nodes.of(self.addresses, config.down_time, config.health_rise, config.health_fall)
        self._states = self.nodes.states
        self.policy = make_policy(config.policy)
        self.sticky_table = StickyTable(config.sticky_ttl)
        self.pool = BackendPool(clock, self.addresses, config.connect_timeout)
        self.frontends: Set[FrontendProtocol] = set()
        self.kept_sessions: Dict[Optional[bytes], Tuple[Optional[bytes], Route]] = {}
        self.new_sessions: Optional[NewSessionLimit] = None
        if config.new_session_rate > 0:
            self.new_sessions = NewSessionLimit(config.new_session_rate, config.new_session_burst)
        counting = cluster.cluster.metrics
        self.requests: Optional[Dict[Tuple[str, int], int]] = {} if counting else None
        self.request_seconds: Optional[Histogram] = Histogram(SECONDS) if counting else None
        self.retries: Dict[str, int] = {}
        # Where redirect_https sends clients; the port actually listened on.
        self.https_port = config.https.port if config.https is not None else None

    def reconfigure(self, cluster: ClusterConfig, config: BalancerConfig) -> None:
        """
        A reload: servers added are routed to once their health checks
        pass, servers removed no more (their cookies fall back to the
        secondary); new connections get the new tunables.
        """
        names = [n.name for n in cluster.nodes]
        for name in [n for n in self.addresses if n not in names]:
            del self.addresses[name]
            self._states.pop(name, None)
            self.pool.idle.pop(name, None)
        for n in cluster.nodes:
            if n.name not in self._states:
                self._states[n.name] = NodeState(n.name)
                self.pool.idle[n.name] = []
            self.addresses[n.name] = n.http
        self.node_names = frozenset(names)
        self.kept_sessions.clear()
        if config.policy != self.config.policy:
            self.policy = make_policy(config.policy)
        if (config.new_session_rate, config.new_session_burst) != (self.config.new_session_rate, self.config.new_session_burst):
            self.new_sessions = None
            if config.new_session_rate > 0:
                self.new_sessions = NewSessionLimit(config.new_session_rate, config.new_session_burst)
        self.cluster = cluster
        self.config = config
        self.limits = Limits(config.max_header_bytes, config.max_headers, config.max_body_bytes)
        self.nodes.down_time, self.nodes.rise, self.nodes.fall = config.down_time, config.health_rise, config.health_fall
        self.sticky_table.ttl = config.sticky_ttl
        self.pool.connect_timeout = config.connect_timeout

    def session(self, cookie: Optional[bytes]) -> Tuple[Optional[bytes], Route]:
        """
        The session cookie of a request with this C{Cookie} header: its value
        and reading, by the rule the session servers apply too
        (L{appliance.cookie.session_cookie}).  A client sends the same
        header on every request, so the answer is kept per header value
        (bounded).
        """
        kept = self.kept_sessions.get(cookie)
        if kept is None:
            kept = session_cookie(cookie, self.cookie_bytes, self.node_names)
            if cookie is None or len(cookie) <= _MAX_KEPT_HEADER:
                if len(self.kept_sessions) >= 10_000:
                    self.kept_sessions.clear()
                self.kept_sessions[cookie] = kept
        return kept

    def first(self, session: Tuple[Optional[bytes], Route], now: float) -> Optional[str]:
        """
        The server a request with this L{session} goes to first when that
        server is available, else C{None} (ask L{plan}).
        """
        if self.sticky:
            return quick_pick(self.sticky_table.lookup(session[0], now), self.nodes, now)
        primary = session[1].primary
        state = self._states.get(primary)
        if state is not None and state.up and now >= state.down_until:
            return primary
        return None

    def plan(self, head: RequestHead, tried: Tuple[str, ...] = ()) -> Tuple[Tuple[str, ...], bool]:
        """
        The servers to try for this request, in order, and whether that is
        all of them.  The common case (the cookie's server is available)
        names that server alone; call again with C{tried} for the rest.
        """
        now = self.clock.seconds()
        value, route = self.session(head.cookie)
        if self.sticky:
            learned = self.sticky_table.lookup(value, now)
            if not tried:
                quick = quick_pick(learned, self.nodes, now)
                if quick is not None:
                    return (quick,), False
            full = plan_sticky(learned, self.nodes, self.policy, now)
        else:
            if not tried:
                quick = quick_pick(route.primary, self.nodes, now)
                if quick is not None:
                    return (quick,), False
            full = plan_plugin(route, self.nodes, self.policy, now)
        if tried:
            full = tuple(n for n in full if n not in tried)
        return full, True

    def server_silent(self, name: str) -> None:
        """
        The witness found C{name} silent for a lease (dead, paused or cut
        off from here): route nothing to it until it is heard again, and
        let nothing wait on it.
        """
        state = self._states.get(name)
        if state is None:
            return
        state.silent = True
        state.down_until = float("inf")
        failed = self.pool.abandon(name)
        if failed:
            self.log.warn("{node} is silent: {n} requests in flight to it retried or failed", node=name, n=failed)

    def server_heard(self, name: str) -> None:
        state = self._states.get(name)
        if state is not None and state.silent:
            state.silent = False
            state.down_until = 0.0

    def sweep(self) -> None:
        """
        Enforce every deadline: slow request heads and bodies, idle
        clients, idle pooled connections, servers that do not answer; forget
        old sticky entries and refilled new-session buckets.
        """
        now = self.clock.seconds()
        for fe in list(self.frontends):
            if fe.deadline is not None and fe.deadline <= now:
                fe.expired()
        self.pool.sweep(now)
        self.sticky_table.expire(now)
        if self.new_sessions is not None:
            self.new_sessions.sweep(now)

    def close(self) -> None:
        for fe in list(self.frontends):
            fe.transport.abortConnection()
        self.pool.close()


def sweep_interval(config: BalancerConfig) -> float:
    """
    Deadlines are checked this often: a quarter of the shortest timeout,
    between 10 ms and 1 s.
    """
    shortest = min(config.head_timeout, config.idle_timeout, config.body_timeout, config.response_timeout)
    return max(0.01, min(1.0, shortest / 4))


def tls_options(cert_path: str, key_path: str):
    """
    Server TLS options from PEM files: TLS 1.2 or newer only.  The
    certificate file may carry the chain after the leaf.
    """
    from OpenSSL import SSL, crypto
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    with open(key_path, "rb") as f:
        key_pem = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in cert_pem.split(marker)[1:]]
    certs = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    if not certs:
        raise ValueError(f"{cert_path}: no certificate")
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    options = CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    # ALPN: clients that offer it (every browser, curl, requests) get
    # http/1.1, or no protocol at all when they offer none we speak (h2
    # alone): never the alert that Twisted's own selection sends when
    # nothing overlaps.  The context is the one every connection uses.
    def select(connection, offered):
        for protocol in ALPN_PROTOCOLS:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    options.getContext().set_alpn_select_callback(select)
    return options


# What the HTTPS listener answers ALPN with, preferred first.
ALPN_PROTOCOLS = (b"http/1.1", b"http/1.0")


class BalancerService(Service):
    """
    One HTTP balancer in front of the cluster's session servers.  With
    C{reuse_port}, one of the C{processes} that share its addresses.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        cluster: ClusterConfig,
        config: BalancerConfig,
        now: Callable[[], float] = time.monotonic,
        reuse_port: bool = False,
    ):
        self.reactor = reactor
        self.reuse_port = reuse_port
        self.cluster = cluster
        self.config = config
        self.now = now
        self.name = f"balancer:{config.name}"
        self.balancer: Optional[Balancer] = None
        self.witness = None
        self.ports: List = []
        self._sweep: Optional[LoopingCall] = None
        self._health: Optional[HealthChecker] = None
        self._watch: Optional[LoopingCall] = None

    def startService(self) -> None:
        config = self.config
        balancer = self.balancer = Balancer(self.reactor, self.cluster, config)
        self.ports.append(listen_tcp(self.reactor, config.listen, FrontendFactory(balancer, False), self.reuse_port))
        if config.https is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            options = tls_options(config.tls_cert, config.tls_key)
            factory = TLSMemoryBIOFactory(options, False, FrontendFactory(balancer, True))
            port = listen_tcp(self.reactor, config.https, factory, self.reuse_port)
            self.ports.append(port)
            balancer.https_port = port.getHost().port
        self._sweep = LoopingCall(balancer.sweep)
        self._sweep.clock = self.reactor
        self._sweep.start(sweep_interval(config), now=False)
        self._health = HealthChecker(
            self.reactor, balancer.nodes, balancer.addresses, config.health_interval, config.connect_timeout
        )
        self._health.start()
        if config.witness is not None:
            self._start_witness(balancer)
        Service.startService(self)
        self.log.info(
            "balancer {name} listening on {listen} ({mode}, {policy})",
            name=config.name,
            listen=str(config.listen),
            mode=config.mode,
            policy=config.policy,
        )

    def _start_witness(self, balancer: Balancer) -> None:
        """
        Vote on who is alive, on the C{witness} address (PB, the cluster
        secret, and TLS when replication uses it).
        """
        from appliance.replication import witness

        settings = self.cluster.cluster

        def probe(server: str) -> Deferred:
            address = self.cluster.node(server).replication
            return witness.probe(self.reactor, address.host, address.port, settings.heartbeat_interval)

        self.witness = witness.Witness(
            self.cluster.node_names, settings.lease_time, settings.heartbeat_interval, self.now, probe,
            on_silent=balancer.server_silent, on_heard=balancer.server_heard, born=time.time_ns(),
        )
        factory = witness.witness_factory(self.witness, settings.secret)
        address = self.config.witness
        if settings.tls:
            from appliance.replication import tls

            port = self.reactor.listenSSL(address.port, factory, tls.server_options(settings), interface=address.host)
        else:
            port = self.reactor.listenTCP(address.port, factory, interface=address.host)
        self.ports.append(port)
        self._watch = LoopingCall(self.witness.check)
        self._watch.clock = self.reactor
        self._watch.start(settings.heartbeat_interval, now=False)

    def reconfigure(self, cluster: ClusterConfig, changes) -> None:
        """
        Apply a reload (L{appliance.reload}): the servers and tunables of
        this balancer's section in C{cluster}; a witness learns the
        servers added (those removed it forgets once they are gone from
        the config).  A removed balancer is stopped by its process.
        """
        config = next((b for b in cluster.balancers if b.name == self.config.name), None)
        if config is None:
            return
        self.cluster = cluster
        self.config = config
        if self.balancer is not None:
            self.balancer.reconfigure(cluster, config)
        if self._health is not None:
            self._health.timeout = min(config.connect_timeout, self._health.interval)
        if self.witness is not None:
            self.witness.servers.clear()
            self.witness.servers.update(cluster.node_names)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        if self._health is not None:
            self._health.stop()
        ports, self.ports = self.ports, []
        stopped = [maybeDeferred(port.stopListening) for port in ports]
        if self.balancer is not None:
            self.balancer.close()
            stopped.append(self._closed(self.balancer, self.reactor.seconds() + 5.0))
        return gatherResults(stopped).addCallback(lambda _: None)

    def _closed(self, balancer: Balancer, give_up: float) -> Deferred:
        """
        Fires once every aborted connection has gone (at most a few
        seconds), so that a stopped service leaves nothing behind.
        """
        done: Deferred = Deferred()

        def check() -> None:
            if (balancer.frontends or balancer.pool.all) and self.reactor.seconds() < give_up:
                self.reactor.callLater(0.01, check)
            else:
                done.callback(None)

        check()
        return done

    def addresses(self) -> List:
        """
        The addresses actually listened on (useful with port 0).
        """
        return [port.getHost() for port in self.ports]
