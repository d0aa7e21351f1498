"""
The reactor the appliance's processes run on: Twisted's epoll reactor,
with each ready descriptor handed to its handler directly.

Twisted's epoll reactor runs every event through C{log.callWithLogger},
which asks the descriptor for its log prefix and pushes a legacy logging
context around the call (two dictionaries, a copy and an update, four
calls deep).  Nothing here reads that context: the appliance logs with
L{twisted.logger}, whose lines (L{appliance.logs}) never show the legacy
C{system} field.  On the balancer's path (two events per request) it
cost more CPU than the balancer's own Python: C{bench/balancer.py
--backend nginx --baseline DIR}, DIR the code before this reactor, gave
32.0 against 37.6 us of CPU per request on CPython 3.11 and 24.5 against
27.6 on PyPy (the README, Benchmarks).

What the wrapping also did is kept: an error that escapes a descriptor's
handling is logged and the loop goes on with the next descriptor.

On PyPy its TCP connections read each socket into one buffer the reactor
thread reuses (L{BufferedRead}), instead of Twisted's C{socket.recv(65536)}:
there that call allocates the whole 64 KB in the collector's nursery for
every read, however few bytes arrived (100,000 reads of a few hundred
bytes: 6,691 minor collections, against 97 through the buffer). The
balancer on PyPy spent 8-13 % less CPU per request (C{bench/balancer.py
--runtime pypy3 --baseline}, behind its own backend and nginx). On CPython
C{recv} allocates and shrinks in C{malloc}, which costs less than
C{recv_into} and a copy (about 0.3 us more per read here), so Twisted's
read is kept there.

C{twistd appliance} runs on this reactor unless one was chosen first
(C{twistd --reactor=...}, or a module that imported the global reactor):
L{install_unless_chosen}, called by L{appliance.tap.makeService}.
"""

from __future__ import annotations

import errno
import platform
import socket
import sys

from twisted.internet import epollreactor, main, tcp
from twisted.logger import Logger

log = Logger()


#: What every TCP connection of this process reads into, one read at a time
#: (only the reactor thread reads sockets), and a view to copy a read out of.
_READ_BUFFER = bytearray(tcp.Connection.bufferSize)
_READ_VIEW = memoryview(_READ_BUFFER)


class BufferedRead:
    """
    C{tcp.Connection.doRead} into L{_READ_BUFFER}: only the bytes that
    arrived are allocated, as a copy of the buffer's start.
    """

    def doRead(self):
        try:
            n = self.socket.recv_into(_READ_BUFFER)
        except OSError as se:
            if se.args[0] == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(_READ_VIEW[:n].tobytes())


class Server(BufferedRead, tcp.Server):
    pass


class Client(BufferedRead, tcp.Client):
    pass


class Port(tcp.Port):
    transport = Server


class Connector(tcp.Connector):
    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)


class ApplianceReactor(epollreactor.EPollReactor):
    """
    L{epollreactor.EPollReactor} without the per-event logging context, and
    on PyPy with TCP connections that read through L{BufferedRead}.
    """

    #: Whether its TCP connections read through L{BufferedRead}.
    buffered_reads = platform.python_implementation() == "PyPy"

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if not self.buffered_reads:
            return super().listenTCP(port, factory, backlog, interface)
        p = Port(port, factory, backlog, interface, self)
        p.startListening()
        return p

    def connectTCP(self, host, port, factory, timeout=30.0, bindAddress=None):
        if not self.buffered_reads:
            return super().connectTCP(host, port, factory, timeout, bindAddress)
        c = Connector(host, port, factory, timeout, bindAddress, self)
        c.connect()
        return c

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        if not self.buffered_reads or addressFamily not in (socket.AF_INET, socket.AF_INET6):
            return super().adoptStreamPort(fileDescriptor, addressFamily, factory)
        p = Port._fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
        p.startListening()
        return p

    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        handle = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.failure("handling an event of {selectable!r}", selectable=selectable)

    doIteration = doPoll

    def sigInt(self, number, frame=None):
        self._stop_on_signal("SIGINT", number)

    def sigTerm(self, number, frame=None):
        self._stop_on_signal("SIGTERM", number)

    def _stop_on_signal(self, name: str, number: int) -> None:
        """
        Stop, as Twisted does on a signal; but a second one while stopping
        (a session server drains for up to C{drain_timeout}) is said in one
        log line instead of a C{ReactorNotRunning} traceback.
        """
        self._exitSignal = number
        self.callFromThread(self._stop_once, name)

    def _stop_once(self, name: str) -> None:
        if self._stopped:
            log.info("Received {signal} while shutting down already; SIGKILL stops at once.", signal=name)
            return
        log.info("Received {signal}, shutting down.", signal=name)
        self.stop()


def install() -> ApplianceReactor:
    reactor = ApplianceReactor()
    main.installReactor(reactor)
    return reactor


def install_unless_chosen() -> bool:
    """
    Install L{ApplianceReactor} as the global reactor unless a reactor is
    installed already; whether it was.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
