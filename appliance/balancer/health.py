"""
Active health checks: C{GET /_appliance/health} on every server, every
C{health_interval}; C{health_rise} passes bring a server back, C{health_fall}
failures take it out (the counting is L{Nodes.checked}).
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.config import Address

from .policy import Nodes

HEALTH_PATH = b"/_appliance/health"


class _Probe(Protocol):
    """
    Sends one health request and reports whether the status line says 200.
    """

    def __init__(self, host: bytes, done: Deferred):
        self.host = host
        self.done: Optional[Deferred] = done
        self.buf = b""

    def connectionMade(self) -> None:
        self.transport.write(
            b"GET " + HEALTH_PATH + b" HTTP/1.1\r\nHost: " + self.host + b"\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n")
        if end >= 0 or len(self.buf) > 1024:
            line = self.buf[:end] if end >= 0 else b""
            parts = line.split(b" ", 2)
            self._report(len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == b"200")
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self._report(False)

    def _report(self, ok: bool) -> None:
        done, self.done = self.done, None
        if done is not None and not done.called:
            done.callback(ok)


class _ProbeFactory(ClientFactory):
    noisy = False

    def __init__(self, host: bytes, done: Deferred):
        self.host = host
        self.done = done

    def buildProtocol(self, addr) -> _Probe:
        return _Probe(self.host, self.done)

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback(False)


class Probe:
    """
    One health check of C{address}: C{done} fires with C{True} or C{False},
    never fails, within C{timeout} seconds; L{cancel} abandons it.
    """

    def __init__(self, reactor, address: Address, timeout: float):
        self.done: Deferred = Deferred()
        factory = _ProbeFactory(str(address).encode("ascii"), self.done)
        self._connector = reactor.connectTCP(address.host, address.port, factory, timeout=timeout)
        self._timer = reactor.callLater(timeout, self.cancel)
        self.done.addBoth(self._stop_timer)

    def _stop_timer(self, ok):
        if self._timer.active():
            self._timer.cancel()
        return ok

    def cancel(self) -> None:
        if not self.done.called:
            self.done.callback(False)
        self._connector.disconnect()


class HealthChecker:
    """
    Checks every server on a timer and feeds the results to L{Nodes}.
    """

    log = Logger()

    def __init__(self, reactor, nodes: Nodes, addresses: Dict[str, Address], interval: float, timeout: float):
        self.reactor = reactor
        self.nodes = nodes
        self.addresses = addresses
        self.interval = interval
        self.timeout = min(timeout, interval)
        self._loop = LoopingCall(self.check_all)
        self._loop.clock = reactor
        self._pending: Dict[str, Probe] = {}

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        for probe in list(self._pending.values()):
            probe.cancel()

    def check_all(self) -> None:
        for name, address in self.addresses.items():
            if name in self._pending:
                continue
            probe = Probe(self.reactor, address, self.timeout)
            self._pending[name] = probe
            probe.done.addCallback(self._result, name)

    def _result(self, ok: bool, name: str) -> None:
        self._pending.pop(name, None)
        if not self._loop.running or name not in self.addresses:
            # Stopped, or the server left the configuration (a reload).
            return
        changed = self.nodes.checked(name, ok)
        if changed is True:
            self.log.info("server {node} is back up", node=name)
        elif changed is False:
            self.log.warn("server {node} is down (health check)", node=name)
