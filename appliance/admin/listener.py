"""
The admin listener: a twisted.web L{Site} on the section's own C{admin}
address, one per configured section of this process (C{[node:NAME]},
C{[balancer:NAME]}, C{[dns]}, and C{[cluster]} for the all-in-one
supervisor).

The services an admin listener reports on are in one place:
L{AdminRoot.services}, the running service objects of its section (one
L{SessionServerService}, L{BalancerService} or L{DnsService}; none for the
supervisor's C{[cluster]} listener).  L{build_root} mounts every resource;
another module mounts its own there with one C{root.putChild} line.
L{AdminRoot.registry} is C{appliance.metrics.registry_for(services)}, the
counters both C{/metrics} and the status read.
"""

from __future__ import annotations

from typing import Optional, Sequence

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import resource, server

from appliance.admin import counters, operations
from appliance.admin.page import StatusPage
from appliance.admin.reload import ReloadResource
from appliance.admin.status import process_status
from appliance.admin.cluster import ClusterResource, Peers
from appliance.admin.auth import READS, Guard, local_host
from appliance.admin.web import Refused, json_body
from appliance.config import Address, ClusterConfig
from appliance.listen import listen_tcp
from appliance.metrics import MetricsResource, registry_for

log = Logger()


class AdminRoot(resource.Resource):
    """
    The root of an admin listener.  C{services}: the running service
    objects this listener reports on (see the module docstring);
    C{section}: C{cluster}, C{dns}, C{balancer:NAME} or C{node:NAME}.
    """

    def __init__(
        self, reactor, cluster: ClusterConfig, section: str, services: Sequence[service.Service], registry=None
    ):
        super().__init__()
        self.reactor = reactor
        self.cluster = cluster
        self.section = section
        self.services = list(services)
        self.registry = registry
        self.history = counters.History()
        self.peers = Peers(reactor, cluster)
        #: The services of this process, L{appliance.service.ProcessServices}
        #: (set as the listener starts): the reload runs there.
        self.process = None
        self.putChild(b"status", StatusPage())

    def sample(self) -> counters.Snapshot:
        """
        The counters now, kept in the history as they come due.
        """
        taken = counters.snapshot(self.registry)
        self.history.offer(self.reactor.seconds(), taken)
        return taken

    def getChild(self, path: bytes, request):
        if path == b"":
            return self.children[b"status"]
        return Refused(404, "no such admin resource")


class StatusResource(resource.Resource):
    """
    C{/status.json}: this listener's part of the status
    (L{appliance.admin.status}).
    """

    isLeaf = True

    def __init__(self, root: AdminRoot):
        super().__init__()
        self.root = root

    def render_GET(self, request) -> bytes:
        return json_body(request, status_of(self.root))


def status_of(root: AdminRoot) -> dict:
    now = root.reactor.seconds()
    taken = root.sample()
    history = root.history
    return process_status(root, now, taken, history.last_hour(taken), history.rates(now, taken))


class AdminSite(server.Site):
    """
    A site that lets a request reach its resource only past the L{Guard};
    non-read requests must also be JSON, which a form of another site
    cannot send without the browser asking first (no cross-site request
    forgery with credentials the browser keeps).
    """

    def __init__(self, root: AdminRoot, guard: Guard):
        super().__init__(root)
        self.guard = guard
        self.noisy = False

    def log(self, request) -> None:
        """
        No access log: the status page asks every second or two.
        """

    def getResourceFor(self, request):
        if self.guard.token is None and not local_host(request.getHeader(b"host")):
            return Refused(403, "without [cluster] admin_token the admin listener answers only to localhost")
        if not self.guard.allows(request.method, request.getHeader(b"authorization")):
            return Refused(401, "admin credentials required")
        if request.method not in READS:
            kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                return Refused(415, "admin operations take Content-Type: application/json")
        return super().getResourceFor(request)


def build_root(reactor, cluster: ClusterConfig, section: str, services: Sequence[service.Service]) -> AdminRoot:
    """
    The admin resources of one listener.
    """
    root = AdminRoot(reactor, cluster, section, services, registry_for(services))
    root.putChild(b"status.json", StatusResource(root))
    root.putChild(b"cluster.json", ClusterResource(root, lambda: status_of(root), root.peers))
    root.putChild(b"metrics", MetricsResource(services))
    operations.mount(root)
    root.putChild(b"reload", ReloadResource(lambda: root.process))
    return root


class AdminService(service.Service):
    """
    Listens on C{address} with the admin site of C{section} while running.
    C{reuse_port}: the section runs as several processes sharing its
    addresses, this one too (each request is answered by one of them).
    """

    def __init__(
        self,
        reactor,
        cluster: ClusterConfig,
        section: str,
        address: Address,
        services: Sequence[service.Service],
        reuse_port: bool = False,
    ):
        self.reactor = reactor
        self.address = address
        self.reuse_port = reuse_port
        self.root = build_root(reactor, cluster, section, services)
        self.site = AdminSite(self.root, Guard.of(cluster))
        self.port = None
        self.sampler = task.LoopingCall(self.root.sample)
        self.sampler.clock = reactor

    def startService(self) -> None:
        super().startService()
        # The process's services (appliance.service.ProcessServices).
        self.root.process = self.parent
        self.port = listen_tcp(self.reactor, self.address, self.site, self.reuse_port)
        self.sampler.start(self.root.history.recent.every, now=True).addErrback(
            lambda f: log.failure("sampling the counters failed", f)
        )
        log.info("admin listener of [{section}] on http://{address}/", section=self.root.section, address=str(self.address))

    def reconfigure(self, cluster: ClusterConfig, changes) -> None:
        """
        A reload: the cluster view asks the admin listeners the new
        configuration names.
        """
        self.root.cluster = cluster

    def stopService(self):
        super().stopService()
        if self.sampler.running:
            self.sampler.stop()
        port, self.port = self.port, None
        closing = [self.root.peers.close()]
        if port is not None:
            closing.append(defer.maybeDeferred(port.stopListening))
        return defer.gatherResults(closing)


def admin_address(cluster: ClusterConfig, section: str) -> Optional[Address]:
    """
    The C{admin} address configured in C{section}, or C{None}.
    """
    return dict(cluster.admins()).get(section)
