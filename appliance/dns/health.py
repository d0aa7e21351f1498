"""
Balancer liveness for the responder.

L{HealthChecker} runs one check per balancer every interval with an injected
clock and check function, and reports the set of live balancer names
whenever it changes.  One failed check takes a balancer out and one passed
check brings it back, so a dead balancer leaves the answers at the end of the
first round that sees it dead.

L{http_health_check} is the real check: C{GET /_appliance/lb-health} over
plain HTTP, healthy only on a 200 status line received within the timeout.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, Iterable, Optional

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.dns.zone import Frontend

HEALTH_PATH = b"/_appliance/lb-health"
#: The status line must arrive within this many bytes.
MAX_STATUS_LINE = 1024

CheckFunction = Callable[[Frontend], "Deferred[bool]"]


class HealthChecker:
    """
    Periodic health checks of a fixed set of frontends.

    Every frontend starts live (so answers are complete before the first
    round ends); C{on_change} is called with the new live set whenever a
    check changes it.  A check still running when the next round starts is
    not started again.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        fronts: Iterable[Frontend],
        check: CheckFunction,
        interval: float,
        on_change: Callable[[FrozenSet[str]], None],
    ):
        self._clock = clock
        self._fronts = tuple(fronts)
        self._check = check
        self._interval = interval
        self._on_change = on_change
        self._live = {f.name for f in self._fronts}
        self._running: Dict[str, Deferred] = {}
        self._loop: Optional[LoopingCall] = None

    @property
    def live(self) -> FrozenSet[str]:
        return frozenset(self._live)

    def start(self) -> None:
        """
        Check now and then every interval.
        """
        self._loop = LoopingCall(self._round)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        """
        Stop checking and cancel the checks in flight.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        running, self._running = self._running, {}
        for d in running.values():
            d.cancel()

    def _round(self) -> None:
        for front in self._fronts:
            if front.name in self._running:
                continue
            try:
                d = self._check(front)
            except Exception:
                self.log.failure("health check of {name} raised", name=front.name)
                d = succeed(False)
            self._running[front.name] = d
            d.addErrback(self._check_failed, front)
            d.addCallback(self._checked, front, d)

    def _check_failed(self, failure: Failure, front: Frontend) -> bool:
        if failure.check(CancelledError):
            return False
        self.log.failure("health check of {name} failed", failure, name=front.name)
        return False

    def _checked(self, healthy: bool, front: Frontend, d: Deferred) -> None:
        if self._running.get(front.name) is not d:
            return  # stopped meanwhile
        del self._running[front.name]
        was = front.name in self._live
        if bool(healthy) == was:
            return
        if healthy:
            self._live.add(front.name)
        else:
            self._live.discard(front.name)
        self.log.info(
            "balancer {name} at {host}:{port} is {state}",
            name=front.name,
            host=front.host,
            port=front.port,
            state="up" if healthy else "down",
        )
        self._on_change(frozenset(self._live))


class _StatusProbe(Protocol):
    """
    Send one health request and fire C{result} with whether the status
    line says 200.
    """

    def __init__(self, host: str, result: Deferred):
        self._host = host
        self._buffer = b""
        self.result = result

    def _finish(self, healthy: bool) -> None:
        if not self.result.called:
            self.result.callback(healthy)

    def connectionMade(self) -> None:
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.transport.write(
            b"GET " + HEALTH_PATH + b" HTTP/1.1\r\nHost: " + host.encode("ascii")
            + b"\r\nConnection: close\r\nUser-Agent: appliance-dns\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n")
        if end < 0 and len(self._buffer) < MAX_STATUS_LINE:
            return
        parts = self._buffer[: max(end, 0)].split(b" ", 2)
        self._finish(len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == b"200")
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._finish(False)


class _ProbeFactory(ClientFactory):
    noisy = False

    def __init__(self, probe: _StatusProbe):
        self.probe = probe

    def buildProtocol(self, addr) -> _StatusProbe:
        return self.probe

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self.probe._finish(False)


def http_health_check(reactor, front: Frontend, timeout: float) -> "Deferred[bool]":
    """
    Whether C{front} answers its health URL with 200 within C{timeout}
    seconds (connecting included).  Never fails: any error is False.
    """
    connectors = []

    def cancel(d: Deferred) -> None:
        if probe.transport is not None:
            probe.transport.abortConnection()
        else:
            connectors[0].disconnect()

    result: Deferred = Deferred(cancel)
    probe = _StatusProbe(front.host, result)
    connectors.append(
        reactor.connectTCP(front.host, front.port, _ProbeFactory(probe), timeout=timeout)
    )
    result.addTimeout(timeout, reactor)
    result.addErrback(lambda _: False)
    return result


def check_timeout(interval: float) -> float:
    """
    How long one check may take: well inside the interval, so a round ends
    before the next begins.
    """
    return max(0.05, min(2.0, interval * 0.4))

