"""
One session server: HTTP for the applications, PB for replication, a link
to every peer, and the periodic work (expiry, touches, digests).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from appliance.config import Address, ClusterConfig
from appliance.replication import peer as peer_edge
from appliance.replication.link import PeerLink, PeerUnavailable
from appliance.replication.replicator import Replicator
from appliance.server import hosting
from appliance.server.node import SessionNode

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


class SessionServerService(service.Service):
    """
    Session server C{name} of C{cluster}.  C{now} is the monotonic clock
    sessions expire by; C{minute_of_day} the local time batching windows
    follow.
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
        settings = cluster.cluster
        self.links: Dict[str, PeerLink] = {}
        self.replicator = Replicator(reactor, settings, self._call, minute_of_day)
        self.node = SessionNode(
            reactor,
            cluster,
            name,
            now,
            self._call,
            lambda peer: peer in self.links and self.links[peer].connected,
            lambda peer: self.links[peer].load if peer in self.links else 0,
            self.replicator.send,
        )
        self._ports = []
        self._loops = []

    def _call(self, peer: str, method: str, *args) -> defer.Deferred:
        link = self.links.get(peer)
        if link is None:
            return defer.fail(PeerUnavailable(peer))
        return link.call(method, *args)

    def health(self) -> dict:
        return {
            "node": self.name,
            "pid": os.getpid(),
            "status": "ok",
            "sessions": len(self.node.store),
            "primaries": sum(1 for s in self.node.store.sessions.values() if s.primary == self.name),
            "unreplicated": self.replicator.unreplicated(),
            "replication": self.cluster.cluster.replication,
            "peers": {name: link.connected for name, link in sorted(self.links.items())},
        }

    def _peer_up(self, peer: str) -> None:
        self.replicator.hold(peer)
        self.node.peer_up(peer).addBoth(lambda _: self.replicator.release(peer))

    def _peer_down(self, peer: str) -> None:
        self.replicator.fail(peer)
        self.node.peer_down(peer).addErrback(lambda f: log.failure("handling the loss of {peer} failed", f, peer=peer))

    def startService(self) -> None:
        super().startService()
        settings = self.cluster.cluster
        server_tls = None
        if settings.tls:
            # Imported here: pyOpenSSL is needed only when TLS is configured.
            from appliance.replication import tls

            server_tls = tls.server_options(settings)
        factory = peer_edge.server_factory(
            self.node, self.cluster.node_names, settings.secret, self.node.limit,
            self.reactor, settings.replication_timeout,
        )
        self._ports.append(listen(self.reactor, self.config.replication, factory, server_tls))
        self._ports.append(
            listen(self.reactor, self.config.http, hosting.site(self.reactor, self.cluster, self.node, self.health))
        )
        for other in self.node.peers:
            client_tls = tls.client_options(settings, other.replication.host) if server_tls else None
            endpoint = client_endpoint(self.reactor, other.replication, settings.replication_timeout, client_tls)
            link = PeerLink(
                self.reactor,
                endpoint.connect,
                self.name,
                other.name,
                settings.secret,
                settings.heartbeat_interval,
                settings.heartbeat_misses,
                settings.replication_timeout,
                self._peer_up,
                self._peer_down,
            )
            self.links[other.name] = link
            link.start()
        sweep = min(settings.session_timeout / 4, 5.0)
        for interval, work in (
            (sweep, self.node.expire),
            (sweep, self.node.send_touches),
            (settings.digest_interval, self._digest_all),
        ):
            loop = task.LoopingCall(work)
            loop.clock = self.reactor
            loop.start(interval, now=False).addErrback(
                lambda f: log.failure("periodic work failed", f)
            )
            self._loops.append(loop)
        log.info(
            "session server {name} on http://{http} replication {repl}",
            name=self.name, http=str(self.config.http), repl=str(self.config.replication),
        )

    def _digest_all(self) -> None:
        for name, link in self.links.items():
            if link.connected:
                self.node.resync(name)

    def stopService(self) -> Optional[defer.Deferred]:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for link in self.links.values():
            link.stop()
        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
