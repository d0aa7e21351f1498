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
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from twisted.application import service
from twisted.logger import Logger
from twisted.web import resource, server

from appliance.admin.auth import READS, Guard, local_host
from appliance.config import Address, ClusterConfig
from appliance.listen import listen_tcp
from appliance.metrics import MetricsResource

log = Logger()


def json_body(request, document, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, sort_keys=True).encode("utf-8") + b"\n"


class Refused(resource.Resource):
    """
    The answer to a request the guard refused: C{code} with a one-line JSON
    reason (and the basic-auth challenge a browser understands on 401).
    """

    isLeaf = True

    def __init__(self, code: int, reason: str):
        super().__init__()
        self.code = code
        self.reason = reason

    def render(self, request) -> bytes:
        if self.code == 401:
            request.setHeader(b"www-authenticate", b'Basic realm="appliance admin"')
        return json_body(request, {"error": self.reason}, self.code)


class AdminRoot(resource.Resource):
    """
    The root of an admin listener.  C{services}: the running service
    objects this listener reports on (see the module docstring);
    C{section}: C{cluster}, C{dns}, C{balancer:NAME} or C{node:NAME}.
    """

    def __init__(self, reactor, cluster: ClusterConfig, section: str, services: Sequence[service.Service]):
        super().__init__()
        self.reactor = reactor
        self.cluster = cluster
        self.section = section
        self.services = list(services)

    def identity(self) -> dict:
        """
        Who answers: this listener's section and process.
        """
        return {"section": self.section, "pid": os.getpid()}

    def getChild(self, path: bytes, request):
        if path == b"":
            return self
        return Refused(404, "no such admin resource")

    def render_GET(self, request) -> bytes:
        paths = sorted(p.decode("ascii") for p in self.children)
        return json_body(request, dict(self.identity(), resources=["/" + p for p in paths]))


class Identity(resource.Resource):
    """
    C{/status.json} until the status of the services is mounted over it:
    which section and process answer.
    """

    isLeaf = True

    def __init__(self, root: AdminRoot):
        super().__init__()
        self.root = root

    def render_GET(self, request) -> bytes:
        return json_body(request, self.root.identity())


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
    root = AdminRoot(reactor, cluster, section, services)
    root.putChild(b"status.json", Identity(root))
    root.putChild(b"metrics", MetricsResource(services))
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

    def startService(self) -> None:
        super().startService()
        self.port = listen_tcp(self.reactor, self.address, self.site, self.reuse_port)
        log.info("admin listener of [{section}] on http://{address}/", section=self.root.section, address=str(self.address))

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def admin_address(cluster: ClusterConfig, section: str) -> Optional[Address]:
    """
    The C{admin} address configured in C{section}, or C{None}.
    """
    return dict(cluster.admins()).get(section)
