"""
The appliance's reactor (L{appliance.reactor}): ready descriptors are
handled without Twisted's per-event logging context, an error that escapes
one is logged and the others are still handled, and C{twistd appliance}
runs on it.
"""

from __future__ import annotations

import socket
import sys

from twisted.internet import reactor as installed
from twisted.internet.interfaces import IReadDescriptor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from appliance import reactor as appliance_reactor

from .helpers import RealNodes


@implementer(IReadDescriptor)
class Reader:
    """
    One end of a socket pair, read when it is ready; C{lost} fails with
    C{error} when it is set.
    """

    def __init__(self, sock: socket.socket, error: Exception = None):
        self.sock = sock
        self.error = error
        self.read = []
        self.lost = []

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        raise AssertionError("the reactor asked for a log prefix")

    def doRead(self):
        data = self.sock.recv(100)
        self.read.append(data)
        if self.error is not None:
            return self.error

    def connectionLost(self, reason):
        self.lost.append(reason)
        if self.error is not None:
            raise ZeroDivisionError("connectionLost failed")


class DispatchTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = appliance_reactor.ApplianceReactor()
        self.addCleanup(self.reactor._poller.close)
        self.pairs = [socket.socketpair() for _ in range(3)]
        for a, b in self.pairs:
            self.addCleanup(a.close)
            self.addCleanup(b.close)

    def test_ready_descriptors_are_read_without_a_log_prefix(self):
        """Every ready descriptor is read in one poll; none is asked for its log prefix."""
        readers = [Reader(b) for _, b in self.pairs]
        for reader in readers:
            self.reactor.addReader(reader)
        for i, (a, _) in enumerate(self.pairs):
            a.send(b"hello %d" % i)
        self.reactor.doPoll(0)
        self.assertEqual([r.read for r in readers], [[b"hello 0"], [b"hello 1"], [b"hello 2"]])

    def test_an_escaping_error_is_logged_and_the_others_are_handled(self):
        """A descriptor whose loss raises is logged and dropped; the other descriptors are still read."""
        readers = [Reader(b, error=ValueError("bad") if i == 1 else None) for i, (_, b) in enumerate(self.pairs)]
        for reader in readers:
            self.reactor.addReader(reader)
        for a, _ in self.pairs:
            a.send(b"x")
        self.reactor.doPoll(0)
        self.assertEqual([len(r.read) for r in readers], [1, 1, 1])
        self.assertEqual(len(readers[1].lost), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([r in self.reactor.getReaders() for r in readers], [True, False, True])

    def test_an_installed_reactor_is_kept(self):
        """With a reactor installed (trial's), install_unless_chosen changes nothing."""
        self.assertFalse(appliance_reactor.install_unless_chosen())
        self.assertIs(sys.modules["twisted.internet.reactor"], installed)


class TwistdTests(SynchronousTestCase):
    def test_twistd_appliance_runs_on_it(self):
        """A session server started as twistd appliance logs that it runs on ApplianceReactor."""
        nodes = RealNodes(self, names=("s1",))
        self.assertIn("reactor class: appliance.reactor.ApplianceReactor.", nodes.log("s1"))
