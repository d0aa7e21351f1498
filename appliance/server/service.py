"""
One session server: HTTP for the applications, PB for replication, a link
to every peer and every witness balancer (its heartbeat renews this node's
lease), and the periodic work (expiry, touches, digests, the lease watch).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from appliance.config import Address, ClusterConfig, NodeConfig
from appliance.core.membership import Membership, Timing
from appliance.replication import peer as peer_edge
from appliance.replication import witness
from appliance.replication.link import PeerLink, PeerUnavailable
from appliance.replication.replicator import Replicator
from appliance.server import hosting
from appliance.server.drain import Drain
from appliance.server.node import SessionNode
from appliance.server.quorum import Quorum
from appliance.server.rebalance import Rebalancer

log = Logger()


def _minute_of_day() -> int:
    local = time.localtime()
    return local.tm_hour * 60 + local.tm_min


def listen(reactor, address: Address, factory, tls_options=None):
    if tls_options is not None:
        return reactor.listenSSL(address.port, factory, tls_options, interface=address.host)
    return reactor.listenTCP(address.port, factory, interface=address.host)


def client_endpoint(reactor, address: Address, timeout: float, tls_options=None):
    if ":" in address.host:
        endpoint = endpoints.TCP6ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    if tls_options is not None:
        endpoint = endpoints.wrapClientTLS(tls_options, endpoint)
    return endpoint


def new_incarnation(after: int = 0) -> int:
    """
    A number larger than C{after} and than any earlier start's (wall-clock
    nanoseconds: a restarted process gets a larger one).
    """
    return max(time.time_ns(), after + 1)


class SessionServerService(service.Service):
    """
    Session server C{name} of C{cluster}.  C{now} is the monotonic clock
    sessions expire and leases run by; C{minute_of_day} the local time
    batching windows follow.
    """

    def __init__(
        self,
        reactor,
        cluster: ClusterConfig,
        name: str,
        now: Callable[[], float] = time.monotonic,
        minute_of_day: Callable[[], int] = _minute_of_day,
    ):
        self.reactor = reactor
        self.cluster = cluster
        self.name = name
        self.config = cluster.node(name)
        self.now = now
        settings = cluster.cluster
        self.settings = settings
        self.links: Dict[str, PeerLink] = {}
        self.servers = frozenset(n for n in cluster.node_names if n != name)
        #: The nodes whose peers may log in here, changed in place by a reload.
        self.known = set(cluster.node_names)
        #: Servers a reload removed (with their config): kept as peers until
        #: their link is down for longer than a lease (they drained and exited).
        self.leaving: Dict[str, NodeConfig] = {}
        self.membership = Membership(
            name,
            new_incarnation(),
            cluster.node_names,
            [b.name for b in cluster.witnesses],
            Timing(settings.lease_time, settings.clock_drift),
            now(),
        )
        self.quorum = Quorum(
            reactor, self.membership, now, self._call, self._connected, self._probe, settings.heartbeat_interval
        )
        self.replicator = Replicator(reactor, settings, self._call, minute_of_day)
        self.node = SessionNode(
            reactor,
            cluster,
            name,
            now,
            self._call,
            self._connected,
            lambda peer: self.links[peer].load if peer in self.links else 0,
            self.replicator.send,
            self.quorum,
        )
        # Until every balancer's health check has seen the drain (a check
        # per interval, health_fall of them, and one in progress).
        linger = max([b.health_interval * (b.health_fall + 1) for b in cluster.balancers] or [0.0])
        self.drainer = Drain(
            self.node, self.replicator.flush, self.replicator.unreplicated, settings.drain_timeout, linger
        )
        self.rebalancer = Rebalancer(self.node, settings.rebalance_rate) if settings.rebalance_rate > 0 else None
        self._drained: Optional[defer.Deferred] = None
        # An operator's request: stopping the reactor stops this service,
        # which drains first.
        self.node.on_drain_request = lambda: self.reactor.callLater(0, self.reactor.stop)
        self._site = None
        self._tls = None
        self._ports = []
        self._loops = []
        # The last heartbeat round trip to each peer and witness, in seconds
        # (the admin status shows it).
        self.round_trips: Dict[str, float] = {}

    def _connected(self, peer: str) -> bool:
        link = self.links.get(peer)
        return link is not None and link.connected

    def _call(self, peer: str, method: str, *args) -> defer.Deferred:
        link = self.links.get(peer)
        if link is None:
            return defer.fail(PeerUnavailable(peer))
        return link.call(method, *args).addErrback(peer_edge.localize)

    def _probe(self, server: str) -> defer.Deferred:
        address = (self.cluster.node(server) or self.leaving[server]).replication
        return witness.probe(self.reactor, address.host, address.port, self.settings.heartbeat_interval)

    def health(self) -> dict:
        return {
            "node": self.name,
            "pid": os.getpid(),
            "incarnation": self.membership.incarnation,
            "status": "draining" if self.node.draining else "ok" if self.quorum.may_serve() else "no-lease",
            "sessions": len(self.node.store),
            "primaries": self.node.store.primaries,
            "unreplicated": self.replicator.unreplicated(),
            "replication": self.cluster.cluster.replication,
            "peers": {name: link.connected for name, link in sorted(self.links.items()) if name in self.servers},
            "witnesses": {name: link.connected for name, link in sorted(self.links.items()) if name not in self.servers},
        }

    def _peer_up(self, peer: str) -> None:
        if peer not in self.servers:
            return
        self.replicator.hold(peer)
        self.node.peer_up(peer).addBoth(lambda _: self.replicator.release(peer))

    def _peer_down(self, peer: str) -> None:
        if peer not in self.servers:
            return
        self.replicator.fail(peer)
        self.node.peer_down(peer)
        if peer in self.leaving:
            # Removed by a reload and gone: once its lease has surely
            # lapsed (it drained, or failover took what it held).
            self.reactor.callLater(self.settings.takeover_wait, self._gone, peer)

    def _gone(self, peer: str) -> None:
        if peer in self.leaving and not self._connected(peer):
            self._forget(peer)

    def _refused(self, peer: str) -> None:
        if peer in self.servers:
            self.quorum.refused(peer)

    def _beat(self, peer: str, answer, asked_at: float) -> None:
        self.round_trips[peer] = self.now() - asked_at
        why = self.quorum.beat(peer, answer, asked_at)
        if why is not None:
            self._end(why)

    def _watch_lease(self) -> None:
        why = self.quorum.watch()
        if why is not None:
            self._end(why)

    def _end(self, why: str) -> None:
        """
        Start a new, empty incarnation: the old one may have been voted dead
        and its sessions taken over.
        """
        old = self.membership.incarnation
        incarnation = new_incarnation(old)
        self.quorum.begin(incarnation)
        dropped = self.node.reset(incarnation)
        for peer in self.servers:
            self.replicator.fail(peer)
        user = peer_edge.username(self.name, incarnation).decode("ascii")
        for link in self.links.values():
            link.relogin(user)
        log.warn(
            "{why}; starting incarnation {new} (was {old}); its {orphans} primaries wait to be promoted"
            " where no newer copy exists",
            why=why, new=incarnation, old=old, orphans=dropped,
        )

    def startService(self) -> None:
        super().startService()
        settings = self.cluster.cluster
        server_tls = None
        if settings.tls:
            # Imported here: pyOpenSSL is needed only when TLS is configured.
            from appliance.replication import tls

            server_tls = tls.server_options(settings)
        self._tls = server_tls
        factory = peer_edge.server_factory(
            self.node, self.known, settings.secret, self.node.limit,
            self.reactor, settings.replication_timeout,
        )
        self._ports.append(listen(self.reactor, self.config.replication, factory, server_tls))
        self._site = hosting.site(self.reactor, self.cluster, self.node, self.health)
        self._ports.append(listen(self.reactor, self.config.http, self._site))
        if self.config.client is not None:
            from appliance.replication import clientgate

            gate = clientgate.for_node(self.cluster, self.name, self.node, self.reactor)
            self._ports.append(listen(self.reactor, self.config.client, gate))
        targets = [(n.name, n.replication) for n in self.node.peers] + [
            (b.name, b.witness) for b in self.cluster.witnesses
        ]
        for other, address in targets:
            self._link(other, address)
        sweep = min(settings.session_timeout / 4, 5.0)
        for interval, work in (
            (sweep, self.node.expire),
            (sweep, self.node.send_touches),
            (settings.digest_interval, self._digest_all),
            (settings.heartbeat_interval, self._watch_lease),
        ):
            loop = task.LoopingCall(work)
            loop.clock = self.reactor
            loop.start(interval, now=False).addErrback(
                lambda f: log.failure("periodic work failed", f)
            )
            self._loops.append(loop)
        if self.rebalancer is not None:
            self.rebalancer.start()
        log.info(
            "session server on http://{http} replication {repl}",
            http=str(self.config.http), repl=str(self.config.replication),
        )

    def _link(self, other: str, address: Address) -> None:
        """
        Start the link to peer or witness C{other} at C{address}.
        """
        settings = self.cluster.cluster
        client_tls = None
        if self._tls is not None:
            from appliance.replication import tls

            client_tls = tls.client_options(settings, address.host)
        endpoint = client_endpoint(self.reactor, address, settings.replication_timeout, client_tls)
        link = PeerLink(
            self.reactor,
            endpoint.connect,
            peer_edge.username(self.name, self.membership.incarnation).decode("ascii"),
            other,
            settings.secret,
            settings.heartbeat_interval,
            settings.heartbeat_misses,
            settings.replication_timeout,
            self._peer_up,
            self._peer_down,
            on_beat=self._beat,
            on_refused=self._refused,
            now=self.now,
            renew_args=lambda: (self.membership.lease.held,),
        )
        self.links[other] = link
        link.start()

    def reconfigure(self, cluster: ClusterConfig, changes) -> None:
        """
        Apply a reload's L{appliance.reload.Changes}: a server added gets a
        link and a vote, a server removed stays a peer (it drains and
        exits first) until its link has been down for a lease, and a
        removed witness is forgotten.  When the edit removed this node,
        it drains and exits.
        """
        if self.name not in cluster.node_names:
            log.info("removed from the configuration: draining, then exiting")
            self.node.on_drain_request()
            return
        old = self.cluster
        self.cluster = cluster
        self.settings = cluster.cluster
        self.node.settings = cluster.cluster
        self.drainer.timeout = cluster.cluster.drain_timeout
        if self._site is not None:
            self._site.access_log = cluster.cluster.access_log
            self._site.resource.cluster = cluster
        for name in changes.added:
            self.servers = self.servers | {name}
            self.node.peers.append(cluster.node(name))
            if self.running:
                self._link(name, cluster.node(name).replication)
        self.leaving.update({name: old.node(name) for name in changes.removed})
        for name in changes.removed:
            if not self._connected(name):
                self.reactor.callLater(self.settings.takeover_wait, self._gone, name)
        for b in cluster.witnesses:
            if b.name in changes.balancers_added and self.running:
                self._link(b.name, b.witness)
        for b in old.witnesses:
            if b.name in changes.balancers_removed:
                self._unlink(b.name)
        self.node.cluster = cluster
        self._vote()

    def _vote(self) -> None:
        """
        The voters and the names this node reads are the configured
        servers and those still leaving.
        """
        servers = list(self.cluster.node_names) + sorted(set(self.leaving) - set(self.cluster.node_names))
        self.known.clear()
        self.known.update(servers)
        self.node.names = frozenset(servers)
        if self._site is not None:
            self._site.resource.names = self.node.names
        self.membership.reconfigure(servers, [b.name for b in self.cluster.witnesses])

    def _unlink(self, name: str) -> None:
        link = self.links.pop(name, None)
        if link is not None:
            link.stop()

    def _forget(self, server: str) -> None:
        """
        A server removed by a reload is gone: no link, no vote, no
        placement.
        """
        if server not in self.leaving:
            return
        del self.leaving[server]
        self.servers = self.servers - {server}
        self.node.peers = [n for n in self.node.peers if n.name != server]
        self._unlink(server)
        self._vote()
        log.info("{server} left the cluster", server=server)

    def _digest_all(self) -> None:
        for name, link in self.links.items():
            if link.connected and name in self.servers:
                self.node.periodic_resync(name)

    def drain(self) -> defer.Deferred:
        """
        Hand everything over (L{appliance.server.drain}); fires with the
        report.  Asked twice, drains once.
        """
        if self._drained is None:
            if self.rebalancer is not None:
                self.rebalancer.stop()
            self._drained = self.drainer.run()
        d = defer.Deferred()
        self._drained.addBoth(lambda r: d.callback(r) or r)
        return d

    def stopService(self) -> Optional[defer.Deferred]:
        """
        A stop (SIGTERM) drains first, then closes everything.
        """
        super().stopService()
        d = self.drain()
        d.addErrback(lambda f: log.failure("drain failed", f))
        return d.addCallback(lambda _: self._close())

    def _close(self) -> defer.Deferred:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for link in self.links.values():
            link.stop()
        self.node.stop()
        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
