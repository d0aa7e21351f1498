"""
twistd appliance: options and the service for this process.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from appliance.config import ClusterConfig, ConfigError

ROLES = ("dns", "balancer", "server")


class Options(usage.Options):
    synopsis = "[--config etc/cluster.ini] [--node NAME [--roles dns,balancer,server]]"
    longdesc = (
        "Without --node, runs every role of the cluster on this machine: the DNS "
        "responder and balancers in this process and each session server in a "
        "supervised child process.  With --node, runs only that node's roles "
        "(one process per host in a real deployment)."
    )
    optParameters = [
        ["config", "c", "etc/cluster.ini", "The cluster configuration file."],
        ["node", "n", None, "Run only the roles of this node."],
        ["roles", "r", ",".join(ROLES), "Which roles to run (comma-separated)."],
        ["section", None, None, "Run only this balancer:NAME or dns section's service "
                                "(how a supervisor starts the processes of a balancer or the responder)."],
    ]

    def postOptions(self) -> None:
        roles = tuple(r.strip() for r in self["roles"].split(",") if r.strip())
        unknown = [r for r in roles if r not in ROLES]
        if unknown or not roles:
            raise usage.UsageError(f"--roles: expected some of {', '.join(ROLES)}")
        self["roles"] = roles


def load(options) -> ClusterConfig:
    """
    The configuration, or exit with its one-line error: a config mistake is
    not a crash and gets no traceback.
    """
    from appliance.runtime import check_runtime, check_tls

    try:
        cluster = ClusterConfig.from_path(options["config"])
        if options["node"] is not None and cluster.node(options["node"]) is None:
            raise ConfigError(options["config"], f"node:{options['node']}", None, "--node names no such section")
        sections = (["dns"] if cluster.dns is not None else []) + [f"balancer:{b.name}" for b in cluster.balancers]
        if options["section"] is not None and options["section"] not in sections:
            raise ConfigError(options["config"], options["section"], None, "--section names no balancer or dns section")
        if "server" in options["roles"]:
            # Here, not as the site starts: a missing module is a config
            # mistake (one line), and the all-in-one supervisor must not
            # restart children that can never start.
            from appliance.server.hosting import check_apps

            check_apps(cluster)
            from appliance.server.services import Services

            Services.checked(cluster)
        # The all-in-one with a runtime only supervises: its children's
        # interpreter is the one that needs TLS (check_runtime asks it).
        if options["node"] is not None or options["section"] is not None or cluster.cluster.runtime is None:
            check_tls(cluster)
        if options["section"] is None:
            check_runtime(cluster)
    except ConfigError as e:
        sys.stderr.write(f"appliance: {e}\n")
        raise SystemExit(1)
    return cluster


def makeService(options):
    from appliance.reactor import install_unless_chosen

    install_unless_chosen()
    from twisted.internet import reactor

    from appliance import logs
    from appliance.reload import Reloader
    from appliance.service import make_service

    cluster = load(options)
    top = make_service(reactor, cluster, options["config"], options["node"], options["roles"], options["section"])
    top.reloader = Reloader(cluster, ClusterConfig.from_path, top.reconfigure)
    top.log_observer = logs.for_twistd(
        getattr(options, "parent", None), cluster.cluster.log_format, logs.process_name(options["node"], options["section"])
    )
    return top
