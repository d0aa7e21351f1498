"""
Run one balancer alone: C{python3 -m appliance.balancer CLUSTER.INI [NAME]}.

Meant for benchmarks and trying things out; a deployment starts the role
with C{twistd appliance}.
"""

from __future__ import annotations

import sys


def main(argv) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from appliance.config import ClusterConfig, ConfigError

    from .service import BalancerService

    if len(argv) not in (2, 3):
        sys.stderr.write("usage: python3 -m appliance.balancer CLUSTER.INI [NAME]\n")
        return 2
    try:
        cluster = ClusterConfig.from_path(argv[1])
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        return 1
    configs = [b for b in cluster.balancers if len(argv) == 2 or b.name == argv[2]]
    if not configs:
        sys.stderr.write("no such [balancer:NAME]\n")
        return 1
    if "-q" not in sys.argv:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    service = BalancerService(reactor, cluster, configs[0])
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv if a != "-q"]))
