"""
The MultiService for this process, built from the configuration.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.runner.procmon import ProcessMonitor

from appliance.config import ClusterConfig

log = Logger()


class ProcessServices(service.MultiService):
    """
    Every service of this process.  A listening address that cannot be
    opened (in use, not permitted) stops startup with the one-line
    C{appliance: FILE: [SECTION] KEY: problem} error, like any config
    mistake, instead of a traceback.
    """

    def __init__(self, cluster: ClusterConfig):
        super().__init__()
        self.cluster = cluster

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


def child_command(config_path: str, node: str) -> list:
    """
    How the all-in-one starts a session server: the same plugin, in its own
    process, so that killing it is a real server failure.
    """
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
        "appliance",
        "--config",
        os.path.abspath(config_path),
        "--node",
        node,
        "--roles",
        "server",
    ]


def make_service(
    reactor,
    cluster: ClusterConfig,
    config_path: str,
    node: Optional[str] = None,
    roles: Sequence[str] = ("dns", "balancer", "server"),
) -> service.MultiService:
    top = ProcessServices(cluster)
    everything = node is None
    if cluster.dns is not None and "dns" in roles and (everything or cluster.dns.node == node):
        from appliance.dns.service import DnsService

        DnsService(reactor, cluster).setServiceParent(top)
    if "balancer" in roles:
        from appliance.balancer.service import BalancerService

        for balancer in cluster.balancers:
            if everything or balancer.node == node:
                BalancerService(reactor, cluster, balancer).setServiceParent(top)
    if "server" in roles:
        if everything:
            monitor = ProcessMonitor(reactor=reactor)
            monitor.minRestartDelay = 0.5
            monitor.maxRestartDelay = 5
            monitor.threshold = 2
            for n in cluster.nodes:
                monitor.addProcess(n.name, child_command(config_path, n.name), env=dict(os.environ))
            monitor.setServiceParent(top)
        else:
            from appliance.server.service import SessionServerService

            SessionServerService(reactor, cluster, node).setServiceParent(top)
    return top
