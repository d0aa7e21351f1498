"""
The DNS edges: they move bytes between the network and a
L{appliance.dns.responder.Responder} and decide nothing themselves.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin

from appliance.dns.responder import Responder

#: A TCP connection with no complete query for this long is closed.
TCP_IDLE_TIMEOUT = 10.0
#: Longest query accepted over TCP; longer ones close the connection.
TCP_MAX_QUERY = 4096
#: Most TCP connections served at once; more are closed on arrival.
TCP_MAX_CONNECTIONS = 256


class DnsDatagramProtocol(DatagramProtocol):
    """
    DNS over UDP: one datagram in, at most one datagram out.
    """

    log = Logger()
    noisy = False

    def __init__(self, responder: Responder, clock: IReactorTime):
        self.responder = responder
        self.clock = clock

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            reply = self.responder.udp(data, addr[0], self.clock.seconds())
        except Exception:
            self.log.failure("answering {size} bytes from {client}", size=len(data), client=addr[0])
            return
        if reply is not None:
            try:
                self.transport.write(reply, addr)
            except OSError as e:
                self.log.warn("cannot answer {client}: {error}", client=addr[0], error=e)


class DnsStreamProtocol(Int16StringReceiver, TimeoutMixin):
    """
    DNS over TCP: length-prefixed queries, several per connection, answered
    in order; closed after L{TCP_IDLE_TIMEOUT} without a query.
    """

    log = Logger()
    MAX_LENGTH = TCP_MAX_QUERY
    factory: "DnsStreamFactory"

    def connectionMade(self) -> None:
        self.callLater = self.factory.clock.callLater
        if self.factory.connections >= TCP_MAX_CONNECTIONS:
            self.log.warn("too many TCP connections, closing a new one")
            self.transport.abortConnection()
            self._counted = False
            return
        self._counted = True
        self.factory.connections += 1
        # A client that pipelines queries without reading the answers stops
        # being read once our send buffer is full, instead of growing it.
        self.transport.registerProducer(self.transport, True)
        self.setTimeout(TCP_IDLE_TIMEOUT)

    def stringReceived(self, query: bytes) -> None:
        self.resetTimeout()
        try:
            reply = self.factory.responder.tcp(query)
        except Exception:
            self.log.failure("answering {size} bytes over TCP", size=len(query))
            self.transport.loseConnection()
            return
        if reply is None:
            self.transport.loseConnection()
            return
        self.sendString(reply)

    def lengthLimitExceeded(self, length: int) -> None:
        self.transport.abortConnection()

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        if getattr(self, "_counted", False):
            self.factory.connections -= 1
            self._counted = False


class DnsStreamFactory(Factory):
    protocol = DnsStreamProtocol
    noisy = False

    def __init__(self, responder: Responder, clock: IReactorTime):
        self.responder = responder
        self.clock = clock
        self.connections = 0

    def buildProtocol(self, addr) -> Optional[DnsStreamProtocol]:
        p = DnsStreamProtocol()
        p.factory = self
        return p
