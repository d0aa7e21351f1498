"""
A TCP relay that adds a delay, changeable live, to connections that already
exist: what C{netem} would do, on a kernel that has no C{netem}.

The lab starts one relay in each host that sends relayed traffic and, from
the start, redirects (nftables DNAT in the host's own namespace) every
connection of the appliance towards a relayed destination to it.  The relay
runs with its own group id so that its own connections to the real
destination are not redirected back to itself.  Each route is one listening
port here and one destination there; the control channel (TCP on the
host's loopback, which no cut touches) sets the one-way delay of every route
towards a destination host:

    delay HOST SECONDS      ->  ok
    ping                    ->  ok

Data in each direction is held for the delay, in order, so a round trip grows
by twice the delay.  A connection whose other side ends is ended too, after
the data still held.

A relay must not hide a dead destination: the appliance takes a refused
connection as proof that nothing listens there.  When the destination
refuses, the route stops listening (so the next connection is refused
here too) until the destination accepts again.

    python3 -m appliance.testing.relay --control PORT --gid GID \
        --route LISTEN_HOST:PORT=DEST_HOST:PORT@NAME ...
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Deque, Dict, List, Optional, Tuple

from twisted.internet import error, protocol
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()


class Delays:
    """
    The current one-way delay towards each destination host.
    """

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def of(self, host: str) -> float:
        return self.seconds.get(host, 0.0)


class Pipe:
    """
    One direction of a relayed connection: bytes written to C{target} after
    the delay its route has now, in the order they came.
    """

    def __init__(self, clock, delay, target=None):
        self.clock = clock
        self.delay = delay
        self.target = target
        self.held: Deque[Tuple[float, bytes]] = collections.deque()
        self.call = None
        self.closing = False

    def put(self, data: bytes) -> None:
        self.held.append((self.clock.seconds() + self.delay(), data))
        self._arrange()

    def close(self) -> None:
        self.closing = True
        self._arrange()

    def attach(self, target) -> None:
        self.target = target
        self._arrange()

    def _arrange(self) -> None:
        if self.call is not None or self.target is None:
            return
        now = self.clock.seconds()
        while self.held and self.held[0][0] <= now:
            self.target.write(self.held.popleft()[1])
        if self.held:
            self.call = self.clock.callLater(self.held[0][0] - now, self._due)
        elif self.closing:
            self.target.loseConnection()

    def _due(self) -> None:
        self.call = None
        self._arrange()

    def abort(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        self.held.clear()


class Upstream(protocol.Protocol):
    def __init__(self, downstream: "Downstream"):
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.up.attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.downstream.down.put(data)

    def connectionLost(self, reason) -> None:
        self.downstream.down.close()


class UpstreamFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, downstream: "Downstream"):
        self.downstream = downstream

    def buildProtocol(self, addr):
        return Upstream(self.downstream)

    def clientConnectionFailed(self, connector, reason) -> None:
        self.downstream.transport.loseConnection()
        if reason.check(error.ConnectionRefusedError):
            self.downstream.route.refused()


class Downstream(protocol.Protocol):
    """
    A connection the appliance made (redirected here): opens its own to the
    real destination and pipes both ways.
    """

    def __init__(self, reactor, route: "Route", delay):
        self.reactor = reactor
        self.route = route
        self.destination = route.destination
        self.delay = delay
        self.up: Optional[Pipe] = None
        self.down: Optional[Pipe] = None

    def connectionMade(self) -> None:
        self.up = Pipe(self.reactor, self.delay)
        self.down = Pipe(self.reactor, self.delay, self.transport)
        host, port = self.destination
        self.reactor.connectTCP(host, port, UpstreamFactory(self), timeout=30)

    def dataReceived(self, data: bytes) -> None:
        self.up.put(data)

    def connectionLost(self, reason) -> None:
        self.down.abort()
        self.up.close()


class _Knock(protocol.ClientFactory):
    """
    One connection attempt to see whether the destination listens again.
    """

    noisy = False

    def __init__(self, route: "Route"):
        self.route = route

    def buildProtocol(self, addr):
        self.route.reopen()
        return _Hangup()

    def clientConnectionFailed(self, connector, reason) -> None:
        self.route.reactor.callLater(0.05, self.route.knock)


class _Hangup(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


class Route(protocol.Factory):
    """
    One listening port here for one destination there, listening only
    while the destination does not refuse connections.
    """

    noisy = False

    def __init__(self, reactor, listen: Tuple[str, int], destination: Tuple[str, int], delay):
        self.reactor = reactor
        self.listen = listen
        self.destination = destination
        self.delay = delay
        self.port = None

    def start(self) -> None:
        host, port = self.listen
        self.port = self.reactor.listenTCP(port, self, interface=host)

    def buildProtocol(self, addr):
        return Downstream(self.reactor, self, self.delay)

    def refused(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()
            log.info("{dest} refuses connections: refusing them here too", dest=self.destination)
            self.knock()

    def knock(self) -> None:
        host, port = self.destination
        self.reactor.connectTCP(host, port, _Knock(self), timeout=5)

    def reopen(self) -> None:
        if self.port is None:
            self.start()
            log.info("{dest} accepts connections again", dest=self.destination)


class Control(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self, delays: Delays):
        self.delays = delays

    def lineReceived(self, line: bytes) -> None:
        words = line.decode("ascii", "replace").split()
        if words == ["ping"]:
            self.sendLine(b"ok")
            return
        if len(words) == 3 and words[0] == "delay":
            try:
                seconds = float(words[2])
            except ValueError:
                seconds = -1.0
            if 0.0 <= seconds <= 60.0:
                self.delays.seconds[words[1]] = seconds
                log.info("delay towards {host}: {seconds}s", host=words[1], seconds=seconds)
                self.sendLine(b"ok")
                return
        self.sendLine(b"error: expected 'ping' or 'delay HOST SECONDS' (0-60)")


class ControlFactory(protocol.Factory):
    def __init__(self, delays: Delays):
        self.delays = delays

    def buildProtocol(self, addr):
        return Control(self.delays)


def parse_route(text: str) -> Tuple[Tuple[str, int], Tuple[str, int], str]:
    """
    C{LISTEN_HOST:PORT=DEST_HOST:PORT@NAME} as ((host, port), (host, port), name).
    """
    ends, _, name = text.partition("@")
    listen, _, dest = ends.partition("=")

    def address(a: str) -> Tuple[str, int]:
        host, _, port = a.rpartition(":")
        return host, int(port)

    if not name or not dest:
        raise ValueError(f"route {text!r}: expected LISTEN_HOST:PORT=DEST_HOST:PORT@NAME")
    return address(listen), address(dest), name


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="appliance.testing.relay")
    parser.add_argument("--control", type=int, required=True, help="the control channel's port on 127.0.0.1")
    parser.add_argument("--gid", type=int, required=True, help="group id to run as (the lab's DNAT skips it)")
    parser.add_argument("--route", action="append", default=[], type=parse_route)
    args = parser.parse_args(argv)
    os.setgroups([])
    os.setgid(args.gid)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    from twisted.internet import reactor

    delays = Delays()
    for listen, destination, name in args.route:
        Route(reactor, listen, destination, lambda name=name: delays.of(name)).start()
    reactor.listenTCP(args.control, ControlFactory(delays), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
