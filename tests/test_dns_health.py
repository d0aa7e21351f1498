"""
Tests for L{appliance.dns.health}: the periodic checker with a Clock and a
fake check, and the HTTP check over in-memory transports.
"""

from __future__ import annotations

from typing import Dict, List

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.dns.health import HealthChecker, check_timeout, http_health_check
from appliance.dns.zone import Frontend

FRONTS = [Frontend("lb1", "192.0.2.1", 80), Frontend("lb2", "192.0.2.2", 80)]


class FakeChecks:
    """
    A check function whose answers the test sets per frontend.
    """

    def __init__(self):
        self.healthy: Dict[str, bool] = {"lb1": True, "lb2": True}
        self.calls: List[str] = []
        self.pending: Dict[str, Deferred] = {}
        self.hang = False

    def __call__(self, front: Frontend) -> Deferred:
        self.calls.append(front.name)
        if self.hang:
            d = self.pending[front.name] = Deferred()
            return d
        return succeed(self.healthy[front.name])


class HealthCheckerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.checks = FakeChecks()
        self.changes: List[frozenset] = []
        self.checker = HealthChecker(self.clock, FRONTS, self.checks, 2.0, self.changes.append)

    def test_all_live_at_start(self):
        """Before any check, every frontend counts as live."""
        self.assertEqual(self.checker.live, {"lb1", "lb2"})

    def test_checks_every_interval(self):
        """A round runs at start and then every interval."""
        self.checker.start()
        self.assertEqual(self.checks.calls, ["lb1", "lb2"])
        self.clock.advance(2.0)
        self.assertEqual(len(self.checks.calls), 4)
        self.assertEqual(self.changes, [])

    def test_dead_leaves_within_interval_and_returns(self):
        """A failed check removes the frontend by the next round; a pass brings it back."""
        self.checker.start()
        self.checks.healthy["lb2"] = False
        self.clock.advance(2.0)
        self.assertEqual(self.changes, [frozenset({"lb1"})])
        self.checks.healthy["lb2"] = True
        self.clock.advance(2.0)
        self.assertEqual(self.changes[-1], frozenset({"lb1", "lb2"}))

    def test_failure_counts_as_down(self):
        """A check that fails (errback) or raises counts as down."""

        def check(front):
            if front.name == "lb1":
                raise RuntimeError("boom")
            return _failed()

        def _failed():
            d = Deferred()
            d.errback(Failure(ConnectionRefusedError()))
            return d

        checker = HealthChecker(self.clock, FRONTS, check, 2.0, self.changes.append)
        checker.start()
        self.assertEqual(self.changes[-1], frozenset())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, ConnectionRefusedError)), 2)

    def test_no_overlapping_checks(self):
        """A check still running is not started again."""
        self.checks.hang = True
        self.checker.start()
        self.clock.advance(2.0)
        self.assertEqual(self.checks.calls, ["lb1", "lb2"])
        self.checks.pending["lb1"].callback(False)
        self.assertEqual(self.changes, [frozenset({"lb2"})])

    def test_stop_cancels(self):
        """stop() cancels checks in flight and no more rounds run."""
        self.checks.hang = True
        self.checker.start()
        pending = list(self.checks.pending.values())
        self.checker.stop()
        self.clock.advance(10.0)
        self.assertEqual(len(self.checks.calls), 2)
        self.assertEqual(self.changes, [])
        for d in pending:
            self.assertTrue(d.called)

    def test_timeout_inside_interval(self):
        """A check's timeout leaves room within the interval."""
        self.assertLess(check_timeout(2.0), 2.0)
        self.assertLess(check_timeout(0.1), 0.1)


class HttpCheckTests(SynchronousTestCase):
    def connect(self, front=FRONTS[0]):
        reactor = MemoryReactorClock()
        d = http_health_check(reactor, front, 0.5)
        host, port, factory, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), (front.host, front.port, 0.5))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return reactor, d, protocol, transport, factory

    def test_200_is_healthy(self):
        """A 200 status line is healthy; the request asks for the health path."""
        _, d, protocol, transport, _ = self.connect()
        self.assertTrue(transport.value().startswith(b"GET /_appliance/lb-health HTTP/1.1\r\n"))
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertIs(self.successResultOf(d), True)

    def test_other_status_is_down(self):
        """A 503 is down."""
        _, d, protocol, _, _ = self.connect()
        protocol.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        self.assertIs(self.successResultOf(d), False)

    def test_garbage_is_down(self):
        """A long line without a status is down."""
        _, d, protocol, _, _ = self.connect()
        protocol.dataReceived(b"x" * 2000)
        self.assertIs(self.successResultOf(d), False)

    def test_connection_lost_is_down(self):
        """A connection closed before a status line is down."""
        _, d, protocol, _, _ = self.connect()
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertIs(self.successResultOf(d), False)

    def test_connect_failure_is_down(self):
        """A refused connection is down."""
        _, d, _, _, factory = self.connect()
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertIs(self.successResultOf(d), False)

    def test_timeout_is_down(self):
        """No answer within the timeout is down."""
        reactor, d, _, transport, _ = self.connect()
        self.assertNoResult(d)
        reactor.advance(0.5)
        self.assertIs(self.successResultOf(d), False)
        self.assertTrue(transport.disconnecting)

    def test_ipv6_host_header(self):
        """An IPv6 frontend is connected to by address with a bracketed Host."""
        _, _, _, transport, _ = self.connect(Frontend("lb3", "2001:db8::3", 8080))
        self.assertIn(b"Host: [2001:db8::3]\r\n", transport.value())
