"""
The DNS responder role: L{DnsService} wires the config, the health checker
and the responder to UDP and TCP listeners on C{[dns] listen}.

C{python -m appliance.dns.service CLUSTER.INI} runs the responder alone in
the foreground (see L{main}); it prints C{ready HOST PORT} on stdout once it
listens.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Callable, FrozenSet, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger

from appliance.config import ClusterConfig, ConfigError
from appliance.listen import listen_tcp, listen_udp
from appliance.dns.health import HealthChecker, check_timeout, http_health_check
from appliance.dns.protocol import DnsDatagramProtocol, DnsStreamFactory
from appliance.dns.responder import Responder
from appliance.dns.rrl import RateLimiter
from appliance.dns.zone import Frontend, ZoneSettings, build_zone, parse_frontends


def _ns_address(host: str) -> Optional[str]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if ip.is_unspecified else ip.compressed


#: Bytes of kernel receive buffer asked for on the UDP socket: room for a
#: burst of a few thousand queries (the default, ~208 KiB, holds ~250).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _enlarge_receive_buffer(port) -> None:
    """
    Ask for a larger receive buffer so that bursts are not dropped by the
    kernel before we read them (capped by net.core.rmem_max; best effort).
    """
    sock = getattr(port, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    except OSError:
        pass


class DnsService(Service):
    """
    The authoritative responder for the cluster name.

    Listens with UDP and TCP on C{cluster.dns.listen} from C{startService};
    C{stopService} returns a Deferred that fires once both ports are closed.
    C{check} replaces the HTTP health check (for tests); it takes a
    L{Frontend} and returns a Deferred firing with whether it is healthy.
    """

    log = Logger()
    name = "dns"

    def __init__(
        self,
        reactor,
        cluster: ClusterConfig,
        check: Optional[Callable[[Frontend], "Deferred[bool]"]] = None,
        reuse_port: bool = False,
    ):
        self._reuse_port = reuse_port
        if cluster.dns is None:
            raise ValueError(f"{cluster.path}: no [dns] section")
        self._reactor = reactor
        self._given_check = check
        self._ports: List = []
        self.responder: Optional[Responder] = None
        self._configure(cluster)

    def _configure(self, cluster: ClusterConfig) -> None:
        reactor, check = self._reactor, self._given_check
        self._dns = dns = cluster.dns
        self._fronts, skipped = parse_frontends(cluster.balancers)
        for label in skipped:
            self.log.warn(
                "balancer {name} does not listen on a specific IP address; not served in DNS",
                name=label,
            )
        self._settings = ZoneSettings(
            zone=dns.zone,
            name=cluster.cluster.name,
            ttl=dns.ttl,
            ns_address=_ns_address(dns.listen.host),
            serial=int(reactor.seconds()) & 0xFFFFFFFF,
        )
        everyone = frozenset(f.name for f in self._fronts)
        zone, limiter = build_zone(self._settings, self._fronts, everyone), RateLimiter(dns.rrl_rate, dns.rrl_slip)
        if self.responder is None:
            self.responder = Responder(zone, limiter, counting=cluster.cluster.metrics)
        else:
            # The listening protocols hold this responder: change it in place.
            self.responder.zone = zone
            self.responder.limiter = limiter
        if check is None:
            timeout = check_timeout(dns.check_interval)

            def check(front: Frontend) -> "Deferred[bool]":
                return http_health_check(reactor, front, timeout)

        self._checker = HealthChecker(
            reactor, self._fronts, check, dns.check_interval, self._live_changed
        )

    def reconfigure(self, cluster: ClusterConfig, changes) -> None:
        """
        Apply a reload (L{appliance.reload}): the balancers answered with
        (added ones once their health checks pass), the TTL, the rate
        limit and the check interval; the listening address stays.
        """
        self._checker.stop()
        self._configure(cluster)
        if self.running:
            self._checker.start()

    def _live_changed(self, live: FrozenSet[str]) -> None:
        serving = live
        if not live and self._fronts:
            self.log.warn(
                "no balancer is healthy; answering with all {count} (fail open)",
                count=len(self._fronts),
            )
            serving = frozenset(f.name for f in self._fronts)
        self.responder.zone = build_zone(self._settings, self._fronts, serving)

    def startService(self) -> None:
        super().startService()
        listen = self._dns.listen
        udp = DnsDatagramProtocol(self.responder, self._reactor)
        tcp = DnsStreamFactory(self.responder, self._reactor)
        udp_port = listen_udp(self._reactor, listen, udp, self._reuse_port, 65535)
        _enlarge_receive_buffer(udp_port)
        try:
            tcp_port = listen_tcp(self._reactor, listen, tcp, self._reuse_port)
        except BaseException:
            udp_port.stopListening()
            super().stopService()
            raise
        self._ports = [udp_port, tcp_port]
        self.log.info(
            "DNS responder for {name} listening on {listen}",
            name=self._settings.name,
            listen=str(listen),
        )
        self._checker.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self._checker.stop()
        ports, self._ports = self._ports, []
        return gatherResults([maybeDeferred(p.stopListening) for p in ports]).addCallback(
            lambda _: None
        )


def main(argv: Optional[List[str]] = None) -> None:
    """
    Run the responder from a cluster config until SIGINT/SIGTERM.

    Logs go to stderr; C{ready HOST PORT} is printed on stdout once the
    ports are open, so a parent process can wait for it.
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m appliance.dns.service CLUSTER.INI\n")
        raise SystemExit(2)
    try:
        cluster = ClusterConfig.from_path(args[0])
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        raise SystemExit(1)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    service = DnsService(reactor, cluster)

    def start() -> None:
        try:
            service.startService()
        except Exception as e:
            sys.stderr.write(f"cannot start: {e}\n")
            reactor.stop()
            return
        sys.stdout.write(f"ready {cluster.dns.listen.host} {cluster.dns.listen.port}\n")
        sys.stdout.flush()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: service.stopService() if service.running else None
    )
    reactor.run()


if __name__ == "__main__":
    main()
