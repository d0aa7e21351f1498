"""
The MultiService for this process, built from the configuration.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.runner.procmon import ProcessMonitor

from appliance.config import ClusterConfig, ConfigError
from appliance.runtime import child_environment, interpreter

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

    def __init__(self, cluster: ClusterConfig, reactor=None):
        super().__init__()
        self.cluster = cluster
        self.reactor = reactor

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        observer = self.log_observer
        if observer is not None and isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            # twistd's AppLogger uses the application's ILogObserver.
            parent.setComponent(ILogObserver, observer)

    #: The reload of this process (L{appliance.reload.Reloader}; what
    #: SIGHUP and the admin listener's reload run), set by the plugin.
    reloader = None
    #: The services and children this process runs (all but --section).
    layout = None

    def reconfigure(self, cluster: ClusterConfig, changes) -> None:
        """
        Apply a reload to every service of this process (each that has a
        C{reconfigure(cluster, changes)}) and to the children it supervises.
        """
        self.cluster = cluster
        if self.log_observer is not None:
            self.log_observer.log_format = cluster.cluster.log_format
        for child in list(self):
            reconfigure = getattr(child, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(cluster, changes)
        if self.layout is not None:
            self.layout.apply(cluster, changes)

    def _hangup(self, signum, frame) -> None:
        # Out of the signal handler, into the reactor's next turn.
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        self.reloader.reload().addErrback(self._reload_failed)

    def _reload_failed(self, failure) -> None:
        # A refused edit is already logged (one line) by the reloader.
        if not failure.check(ConfigError):
            log.failure("reload failed", failure)

    def startService(self) -> None:
        if self.reloader is not None and self.reactor is not None:
            import signal

            signal.signal(signal.SIGHUP, self._hangup)
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


def kill_after(cluster: ClusterConfig) -> float:
    """
    How long a supervised child has between SIGTERM and SIGKILL: a session
    server's whole drain, and a margin to exit (procmon's 5 s would cut
    most drains short when the all-in-one stops).
    """
    return cluster.cluster.drain_timeout + 5


class _Children:
    """
    The supervised child processes of this process, in one
    L{ProcessMonitor} created with the first of them.
    """

    def __init__(self, reactor, parent: service.MultiService, kill_after: float):
        self.reactor = reactor
        self.parent = parent
        self.monitor: Optional[ProcessMonitor] = None
        self.kill_after = kill_after

    def set_kill_after(self, seconds: float) -> None:
        """
        How long a child has, after SIGTERM, before the supervisor kills it
        (when this process stops): a session server's drain must fit.
        """
        self.kill_after = seconds
        if self.monitor is not None:
            self.monitor.killTime = seconds

    def names(self) -> list:
        return [] if self.monitor is None else list(self.monitor.processes)

    def signal(self, signal_name: str, exclude=()) -> None:
        """
        Send C{signal_name} (C{"HUP"}) to every running child but those
        named in C{exclude}.
        """
        if self.monitor is None:
            return
        for name, protocol in list(self.monitor.protocols.items()):
            if name not in exclude and protocol.transport is not None and protocol.transport.pid is not None:
                protocol.transport.signalProcess(signal_name)

    def remove(self, name: str, kill_after: float) -> None:
        """
        Stop child C{name} for good: SIGTERM, and SIGKILL only if it has
        not exited C{kill_after} seconds later (a server drains first).
        """
        if self.monitor is None or name not in self.monitor.processes:
            return
        usual, self.monitor.killTime = self.monitor.killTime, kill_after
        try:
            self.monitor.removeProcess(name)
        finally:
            self.monitor.killTime = usual

    def add(self, name: str, argv: list) -> None:
        if self.monitor is None:
            self.monitor = ProcessMonitor(reactor=self.reactor)
            self.monitor.minRestartDelay = 0.5
            self.monitor.maxRestartDelay = 5
            self.monitor.threshold = 2
            self.monitor.killTime = self.kill_after
            self.monitor.setServiceParent(self.parent)
        self.monitor.addProcess(name, argv, env=child_environment(os.environ))


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
    top = ProcessServices(cluster, reactor)
    if section is not None:
        only = section_service(reactor, cluster, section)
        only.setServiceParent(top)
        processes = cluster.dns.processes if section == "dns" else next(
            b.processes for b in cluster.balancers if f"balancer:{b.name}" == section
        )
        _admin(top, reactor, cluster, section, [only], reuse_port=processes > 1)
        return top
    layout = _Layout(reactor, top, config_path, node, roles, interpreter(cluster))
    top.layout = layout
    if cluster.dns is not None and "dns" in roles and (layout.everything or cluster.dns.node == node):
        from appliance.dns.service import DnsService

        layout.start(cluster, "dns", cluster.dns.processes, lambda: DnsService(reactor, cluster))
    for balancer in layout.balancers(cluster):
        layout.start_balancer(cluster, balancer)
    if "server" in roles:
        if layout.everything:
            for n in cluster.nodes:
                layout.children.add(n.name, child_command(config_path, n.name, layout.executable))
        else:
            from appliance.server.service import SessionServerService

            from appliance.server.collector import Collector

            server = SessionServerService(reactor, cluster, node)
            server.setServiceParent(top)
            memory = Collector(node, reactor, lambda: server.node.protection.busy)
            memory.setServiceParent(top)
            _admin(top, reactor, cluster, f"node:{node}", [server, memory])
    if layout.everything:
        _admin(top, reactor, cluster, "cluster", [])
    return top


class _Layout:
    """
    Which services and supervised children this process runs, and how a
    reload adds and removes them.
    """

    def __init__(self, reactor, top: "ProcessServices", config_path: str, node: Optional[str], roles: Sequence[str], executable: str):
        self.reactor = reactor
        self.top = top
        self.config_path = config_path
        self.node = node
        self.roles = roles
        self.everything = node is None
        self.executable = executable
        self.in_children = self.everything and top.cluster.cluster.runtime is not None
        self.children = _Children(reactor, top, kill_after(top.cluster))

    def balancers(self, cluster: ClusterConfig):
        if "balancer" not in self.roles:
            return []
        return [b for b in cluster.balancers if self.everything or b.node == self.node]

    def start(self, cluster: ClusterConfig, name: str, processes: int, make) -> None:
        if processes == 1 and not self.in_children:
            made = make()
            made.setServiceParent(self.top)
            _admin(self.top, self.reactor, cluster, name, [made])
            return
        for i in range(1, processes + 1):
            self.children.add(name if processes == 1 else f"{name}#{i}", section_command(self.config_path, name, self.executable))

    def start_balancer(self, cluster: ClusterConfig, balancer) -> None:
        from appliance.balancer.service import BalancerService

        self.start(cluster, f"balancer:{balancer.name}", balancer.processes,
                   lambda: BalancerService(self.reactor, cluster, balancer))

    def apply(self, cluster: ClusterConfig, changes) -> None:
        """
        A reload: the children that stay re-read the file too (SIGHUP);
        the balancers and session servers (all-in-one) it added start, and
        those it removed stop (a session server drains first: SIGTERM,
        with up to drain_timeout before the supervisor kills it).
        """
        self.children.signal("HUP", exclude=changes.removed)
        self.children.set_kill_after(kill_after(cluster))
        for balancer in self.balancers(cluster):
            if balancer.name in changes.balancers_added:
                self.start_balancer(cluster, balancer)
        for name in changes.balancers_removed:
            self._stop(f"balancer:{name}")
        if self.everything and "server" in self.roles:
            for name in changes.added:
                self.children.add(name, child_command(self.config_path, name, self.executable))
            for name in changes.removed:
                self.children.remove(name, kill_after(cluster))

    def _stop(self, section: str) -> None:
        for name in self.children.names():
            if name == section or name.startswith(section + "#"):
                self.children.remove(name, 10)
        for child in list(self.top):
            if child.name == section:
                defer.maybeDeferred(self.top.removeService, child).addErrback(
                    lambda f: log.failure("stopping {section} failed", f, section=section)
                )


def _admin(top, reactor, cluster: ClusterConfig, section: str, services: list, reuse_port: bool = False) -> None:
    """
    The admin listener of C{section} in this process, when one is configured.
    """
    from appliance.admin.listener import AdminService, admin_address

    address = admin_address(cluster, section)
    if address is not None:
        AdminService(reactor, cluster, section, address, services, reuse_port).setServiceParent(top)
