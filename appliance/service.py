"""
The MultiService for this process, built from the configuration.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.runner.procmon import ProcessMonitor

from appliance.config import ClusterConfig, ConfigError
from appliance.runtime import interpreter

log = Logger()


class ProcessServices(service.MultiService):
    """
    Every service of this process.  A listening address that cannot be
    opened (in use, not permitted) stops startup with the one-line
    C{appliance: FILE: [SECTION] KEY: problem} error, like any config
    mistake, instead of a traceback.
    """

    #: The observer twistd logs through (L{appliance.logs}), installed on
    #: the application this joins unless twistd was given its own.
    log_observer = None

    def __init__(self, cluster: ClusterConfig):
        super().__init__()
        self.cluster = cluster

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        observer = self.log_observer
        if observer is not None and isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            # twistd's AppLogger uses the application's ILogObserver.
            parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListenError as e:
            problem = getattr(e.socketError, "strerror", None) or str(e.socketError)
            error = self.cluster.listen_error(e.interface, e.port, problem)
            log.error("{error}", error=str(error))
            # twistd has redirected sys.stderr into the log by now.
            sys.__stderr__.write(f"appliance: {error}\n")
            sys.__stderr__.flush()
            raise SystemExit(1)


def child_command(config_path: str, node: str, executable: Optional[str] = None) -> list:
    """
    How the all-in-one starts a session server: the same plugin, in its own
    process, so that killing it is a real server failure.
    """
    return _command(config_path, executable, "--node", node, "--roles", "server")


def section_command(config_path: str, section: str, executable: Optional[str] = None) -> list:
    """
    How a supervisor starts one process of a balancer or of the DNS
    responder (C{section} is C{balancer:NAME} or C{dns}).
    """
    return _command(config_path, executable, "--section", section)


def _command(config_path: str, executable: Optional[str], *args: str) -> list:
    return [
        executable or sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
        "appliance",
        "--config",
        os.path.abspath(config_path),
        *args,
    ]


class _Children:
    """
    The supervised child processes of this process, in one
    L{ProcessMonitor} created with the first of them.
    """

    def __init__(self, reactor, parent: service.MultiService):
        self.reactor = reactor
        self.parent = parent
        self.monitor: Optional[ProcessMonitor] = None

    def add(self, name: str, argv: list) -> None:
        if self.monitor is None:
            self.monitor = ProcessMonitor(reactor=self.reactor)
            self.monitor.minRestartDelay = 0.5
            self.monitor.maxRestartDelay = 5
            self.monitor.threshold = 2
            self.monitor.setServiceParent(self.parent)
        self.monitor.addProcess(name, argv, env=dict(os.environ))


def section_service(reactor, cluster: ClusterConfig, section: str) -> service.Service:
    """
    The one service a C{--section} child runs; it shares its addresses with
    the other processes of that section when there are several.
    """
    if section == "dns" and cluster.dns is not None:
        from appliance.dns.service import DnsService

        return DnsService(reactor, cluster, reuse_port=cluster.dns.processes > 1)
    for balancer in cluster.balancers:
        if section == f"balancer:{balancer.name}":
            from appliance.balancer.service import BalancerService

            return BalancerService(reactor, cluster, balancer, reuse_port=balancer.processes > 1)
    raise ConfigError(cluster.path, section, None, "--section names no balancer or dns section")


def make_service(
    reactor,
    cluster: ClusterConfig,
    config_path: str,
    node: Optional[str] = None,
    roles: Sequence[str] = ("dns", "balancer", "server"),
    section: Optional[str] = None,
) -> service.MultiService:
    """
    This process's services.  Without C{node} (the all-in-one), each session
    server is a supervised child; with C{[cluster] runtime}, so is every
    balancer and the DNS responder, under that interpreter, while this
    process only supervises.  A balancer or responder with C{processes = N}
    is N supervised children sharing its addresses.
    """
    top = ProcessServices(cluster)
    if section is not None:
        only = section_service(reactor, cluster, section)
        only.setServiceParent(top)
        processes = cluster.dns.processes if section == "dns" else next(
            b.processes for b in cluster.balancers if f"balancer:{b.name}" == section
        )
        _admin(top, reactor, cluster, section, [only], reuse_port=processes > 1)
        return top
    everything = node is None
    executable = interpreter(cluster)
    in_children = everything and cluster.cluster.runtime is not None
    children = _Children(reactor, top)

    def start(name: str, processes: int, make) -> None:
        if processes == 1 and not in_children:
            made = make()
            made.setServiceParent(top)
            _admin(top, reactor, cluster, name, [made])
            return
        for i in range(1, processes + 1):
            children.add(name if processes == 1 else f"{name}#{i}", section_command(config_path, name, executable))

    if cluster.dns is not None and "dns" in roles and (everything or cluster.dns.node == node):
        from appliance.dns.service import DnsService

        start("dns", cluster.dns.processes, lambda: DnsService(reactor, cluster))
    if "balancer" in roles:
        from appliance.balancer.service import BalancerService

        for balancer in cluster.balancers:
            if everything or balancer.node == node:
                start(f"balancer:{balancer.name}", balancer.processes,
                      lambda b=balancer: BalancerService(reactor, cluster, b))
    if "server" in roles:
        if everything:
            for n in cluster.nodes:
                children.add(n.name, child_command(config_path, n.name, executable))
        else:
            from appliance.server.service import SessionServerService

            server = SessionServerService(reactor, cluster, node)
            server.setServiceParent(top)
            _admin(top, reactor, cluster, f"node:{node}", [server])
    if everything:
        _admin(top, reactor, cluster, "cluster", [])
    return top


def _admin(top, reactor, cluster: ClusterConfig, section: str, services: list, reuse_port: bool = False) -> None:
    """
    The admin listener of C{section} in this process, when one is configured.
    """
    from appliance.admin.listener import AdminService, admin_address

    address = admin_address(cluster, section)
    if address is not None:
        AdminService(reactor, cluster, section, address, services, reuse_port).setServiceParent(top)
