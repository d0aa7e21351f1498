"""
The appliance's reactor (L{appliance.reactor}): ready descriptors are
handled without Twisted's per-event logging context, an error that escapes
one is logged and the others are still handled, and C{twistd appliance}
runs on it; on PyPy its TCP connections read through one reused buffer and
deliver every byte as it was sent.
"""

from __future__ import annotations

import socket
import sys

from twisted.internet import protocol
from twisted.internet import reactor as installed
from twisted.internet.error import ConnectionDone
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


class Collect(protocol.Protocol):
    def __init__(self):
        self.chunks = []
        self.lost = []

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason)


class BufferedReadTests(SynchronousTestCase):
    """
    TCP through an (uninstalled) L{ApplianceReactor} with buffered reads,
    whatever the runtime, turned by hand.
    """

    def setUp(self):
        self.reactor = appliance_reactor.ApplianceReactor()
        self.reactor.buffered_reads = True
        self.addCleanup(self.reactor._poller.close)
        self.accepted = []
        self.client = Collect()

    def turn_until(self, done, turns=2000):
        for _ in range(turns):
            if done():
                return
            self.reactor.runUntilCurrent()
            self.reactor.doPoll(0.01)
        self.fail("the reactor never got there")

    def connect(self, port):
        factory = protocol.ClientFactory()
        factory.buildProtocol = lambda addr: self.client
        connector = self.reactor.connectTCP("127.0.0.1", port.getHost().port, factory, timeout=5)
        self.addCleanup(connector.disconnect)
        self.turn_until(lambda: self.accepted and self.client.transport is not None and self.client.transport.connected)
        return connector

    def accepting(self):
        """A factory whose every protocol is a new L{Collect} in C{self.accepted}."""
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: self.accepted.append(Collect()) or self.accepted[-1]
        return factory

    def listen(self):
        port = self.reactor.listenTCP(0, self.accepting(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port

    def test_bytes_arrive_whole_and_in_order_through_the_shared_buffer(self):
        """Reads larger and smaller than the buffer, in both directions, deliver exactly what was sent; an earlier read is not overwritten by a later one."""
        self.connect(self.listen())
        server = self.accepted[0]
        self.assertIsInstance(server.transport, appliance_reactor.Server)
        self.assertIsInstance(self.client.transport, appliance_reactor.Client)
        big = bytes(range(256)) * 1024  # 256 KB: several reads of the 64 KB buffer
        self.client.transport.write(b"first")
        self.turn_until(lambda: server.chunks)
        first = server.chunks[0]
        self.client.transport.write(big)
        self.turn_until(lambda: sum(map(len, server.chunks)) == 5 + len(big))
        self.assertEqual(first, b"first")
        self.assertEqual(b"".join(server.chunks), b"first" + big)
        self.assertTrue(all(isinstance(c, bytes) for c in server.chunks))
        server.transport.write(b"back")
        self.turn_until(lambda: self.client.chunks)
        self.assertEqual(self.client.chunks, [b"back"])

    def test_the_balancers_direct_send_takes_these_connections(self):
        """send_now sends on a buffered-read connection's socket at once, as on Twisted's own, instead of queueing a write for the next turn."""
        from appliance.balancer.flow import send_now

        self.connect(self.listen())
        server = self.accepted[0]
        send_now(server.transport, b"now")
        self.assertEqual((server.transport._tempDataBuffer, server.transport.dataBuffer), ([], b""))
        self.turn_until(lambda: self.client.chunks)
        self.assertEqual(self.client.chunks, [b"now"])

    def test_a_closed_connection_is_done(self):
        """The peer closing is connectionLost with ConnectionDone on the reading side."""
        self.connect(self.listen())
        server = self.accepted[0]
        self.client.transport.loseConnection()
        self.turn_until(lambda: server.lost)
        self.assertTrue(server.lost[0].check(ConnectionDone))

    def test_an_adopted_port_reads_through_the_buffer(self):
        """A port adopted from a listening socket (the balancer's SO_REUSEPORT processes) accepts connections that read through the buffer."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        sock.setblocking(False)
        port = self.reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, self.accepting())
        self.addCleanup(port.stopListening)
        self.connect(port)
        self.assertIsInstance(self.accepted[0].transport, appliance_reactor.Server)
        self.client.transport.write(b"hello")
        self.turn_until(lambda: self.accepted[0].chunks)
        self.assertEqual(self.accepted[0].chunks, [b"hello"])


class SignalTests(SynchronousTestCase):
    def test_a_second_signal_while_stopping_is_a_log_line(self):
        """SIGTERM stops the reactor; SIGTERM or SIGINT again while it stops logs one line and raises nothing (Twisted's reactor logged ReactorNotRunning)."""
        from twisted.logger import globalLogPublisher

        r = appliance_reactor.ApplianceReactor()
        self.addCleanup(r._poller.close)
        r._stopped = False  # as run() leaves it
        said = []
        observer = lambda event: said.append(event.get("log_format", ""))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        r.sigTerm(15)
        r.runUntilCurrent()
        self.assertTrue(r._stopped)
        self.assertEqual(r._exitSignal, 15)
        r.sigTerm(15)
        r.sigInt(2)
        r.runUntilCurrent()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([f for f in said if "while shutting down already" in f], [
            "Received {signal} while shutting down already; SIGKILL stops at once."] * 2)


class ReadChoiceTests(SynchronousTestCase):
    def test_buffered_reads_on_pypy_only(self):
        """The buffered read is the default on PyPy; on CPython the reactor's ports and connectors are Twisted's own."""
        from twisted.internet import tcp

        self.assertEqual(appliance_reactor.ApplianceReactor.buffered_reads, sys.implementation.name == "pypy")
        r = appliance_reactor.ApplianceReactor()
        self.addCleanup(r._poller.close)
        r.buffered_reads = False
        port = r.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIs(type(port), tcp.Port)
        connector = r.connectTCP("127.0.0.1", port.getHost().port, protocol.ClientFactory(), timeout=5)
        self.addCleanup(connector.disconnect)
        self.assertIs(type(connector), tcp.Connector)


class TwistdTests(SynchronousTestCase):
    def test_twistd_appliance_runs_on_it(self):
        """A session server started as twistd appliance logs that it runs on ApplianceReactor."""
        nodes = RealNodes(self, names=("s1",))
        self.assertIn("reactor class: appliance.reactor.ApplianceReactor.", nodes.log("s1"))
