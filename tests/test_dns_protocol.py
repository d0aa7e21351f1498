"""
Tests for L{appliance.dns.protocol} with fake transports, and for
L{appliance.dns.service.DnsService} on a fake reactor.
"""

from __future__ import annotations

import socket
import struct
from typing import List, Tuple

import attrs
from twisted.application.service import IService
from twisted.internet.defer import succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from appliance.dns.protocol import (
    TCP_IDLE_TIMEOUT,
    TCP_MAX_CONNECTIONS,
    DnsDatagramProtocol,
    DnsStreamFactory,
)
from appliance.dns.responder import Responder
from appliance.dns.rrl import RateLimiter
from appliance.dns.service import UDP_RECEIVE_BUFFER, DnsService, _enlarge_receive_buffer

from tests.test_dns_support import MALFORMED, NAME, answers, cluster, parse, query, zone


class FakeDatagramTransport:
    """
    Records what a DatagramProtocol writes; MemoryReactor has no UDP.
    """

    def __init__(self):
        self.written: List[Tuple[bytes, tuple]] = []

    def write(self, data: bytes, addr) -> None:
        self.written.append((data, addr))


class FakeUDPPort:
    def __init__(self, port, protocol, interface, maxPacketSize):
        self.port, self.protocol, self.interface = port, protocol, interface
        self.maxPacketSize = maxPacketSize
        self.stopped = False

    def stopListening(self):
        self.stopped = True
        return succeed(None)


class UDPMemoryReactor(MemoryReactorClock):
    """
    MemoryReactorClock plus a listenUDP that records its ports.
    """

    def __init__(self):
        super().__init__()
        self.udpPorts: List[FakeUDPPort] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        p = FakeUDPPort(port, protocol, interface, maxPacketSize)
        self.udpPorts.append(p)
        return p


def udp(limiter=None):
    clock = Clock()
    protocol = DnsDatagramProtocol(Responder(zone(), limiter), clock)
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


class DatagramTests(SynchronousTestCase):
    def test_answers_to_sender(self):
        """A query is answered to the address it came from."""
        protocol, transport, _ = udp()
        protocol.datagramReceived(query(NAME, qid=9), ("192.0.2.50", 5000))
        [(data, addr)] = transport.written
        self.assertEqual(addr, ("192.0.2.50", 5000))
        self.assertEqual(parse(data).header.id, 9)

    def test_malformed_then_valid(self):
        """Malformed packets never break the protocol; the next query is answered."""
        protocol, transport, _ = udp()
        for data in list(MALFORMED.values()) + [b"", b"\x00", b"\xff" * 12]:
            protocol.datagramReceived(data, ("192.0.2.50", 5000))
        protocol.datagramReceived(query(NAME, qid=10), ("192.0.2.50", 5000))
        self.assertEqual(parse(transport.written[-1][0]).header.id, 10)
        self.assertEqual(len(answers(parse(transport.written[-1][0]))), 2)

    def test_unexpected_error_logged(self):
        """A bug in the responder is logged and the datagram dropped."""
        protocol, transport, _ = udp()

        def broken(*args):
            raise ZeroDivisionError()

        protocol.responder.udp = broken
        protocol.datagramReceived(query(NAME), ("192.0.2.50", 5000))
        self.assertEqual(transport.written, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_rate_limit_uses_clock(self):
        """The limiter is fed the injected clock's time: tokens refill as it advances."""
        protocol, transport, clock = udp(RateLimiter(rate=1, slip=0))
        protocol.datagramReceived(query(NAME), ("192.0.2.50", 5000))
        protocol.datagramReceived(query(NAME), ("192.0.2.50", 5000))
        self.assertEqual(len(transport.written), 1)
        clock.advance(1.0)
        protocol.datagramReceived(query(NAME), ("192.0.2.50", 5000))
        self.assertEqual(len(transport.written), 2)


def framed(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def unframe(stream: bytes) -> List[bytes]:
    messages = []
    while stream:
        (n,) = struct.unpack("!H", stream[:2])
        messages.append(stream[2 : 2 + n])
        stream = stream[2 + n :]
    return messages


def tcp():
    clock = Clock()
    factory = DnsStreamFactory(Responder(zone(), RateLimiter(rate=1, slip=0)), clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return factory, protocol, transport, clock


class StreamTests(SynchronousTestCase):
    def test_several_queries_per_connection(self):
        """Length-prefixed queries, even split or batched, are answered in order."""
        _, protocol, transport, _ = tcp()
        stream = framed(query(NAME, qid=1)) + framed(query(NAME, "AAAA", qid=2))
        for i in range(len(stream)):
            protocol.dataReceived(stream[i : i + 1])
        protocol.dataReceived(framed(query(NAME, qid=3)) + framed(query(NAME, qid=4)))
        replies = [parse(m) for m in unframe(transport.value())]
        self.assertEqual([r.header.id for r in replies], [1, 2, 3, 4])
        self.assertEqual(answers(replies[1], "AAAA"), ["2001:db8::3"])
        self.assertFalse(transport.disconnecting)

    def test_backpressure(self):
        """The transport is its own producer, so a full send buffer pauses reading."""
        _, _, transport, _ = tcp()
        self.assertIs(transport.producer, transport)
        self.assertTrue(transport.streaming)

    def test_not_rate_limited(self):
        """TCP answers ignore the UDP rate limit."""
        _, protocol, transport, _ = tcp()
        protocol.dataReceived(b"".join(framed(query(NAME, qid=i)) for i in range(10)))
        self.assertEqual(len(unframe(transport.value())), 10)

    def test_idle_timeout(self):
        """A connection idle for the timeout is closed; activity resets it."""
        _, protocol, transport, clock = tcp()
        clock.advance(TCP_IDLE_TIMEOUT - 1)
        protocol.dataReceived(framed(query(NAME)))
        clock.advance(TCP_IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_oversized_query(self):
        """A length prefix over the limit closes the connection."""
        _, protocol, transport, _ = tcp()
        protocol.dataReceived(struct.pack("!H", 60000) + b"x" * 100)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_response_packet_closes(self):
        """A response (QR set) over TCP gets no answer and the connection closes."""
        _, protocol, transport, _ = tcp()
        data = bytearray(query(NAME))
        data[2] |= 0x80
        protocol.dataReceived(framed(bytes(data)))
        self.assertTrue(transport.disconnecting)

    def test_malformed_gets_formerr(self):
        """Malformed queries over TCP get FORMERR and the connection stays usable."""
        _, protocol, transport, _ = tcp()
        for data in MALFORMED.values():
            protocol.dataReceived(framed(data))
        protocol.dataReceived(framed(query(NAME, qid=77)))
        replies = unframe(transport.value())
        self.assertEqual(len(replies), len(MALFORMED) + 1)
        self.assertEqual(parse(replies[-1]).header.id, 77)

    def test_connection_limit(self):
        """Connections beyond the limit are closed at once; closing frees a slot."""
        factory, first, _, _ = tcp()
        others = []
        for _ in range(TCP_MAX_CONNECTIONS - 1):
            p = factory.buildProtocol(None)
            p.makeConnection(StringTransport())
            others.append(p)
        extra = factory.buildProtocol(None)
        t = StringTransport()
        extra.makeConnection(t)
        self.assertTrue(t.disconnecting)
        extra.connectionLost(None)
        self.assertEqual(factory.connections, TCP_MAX_CONNECTIONS)
        first.connectionLost(None)
        self.assertEqual(factory.connections, TCP_MAX_CONNECTIONS - 1)


class ServiceTests(SynchronousTestCase):
    def make(self, checks=None):
        reactor = UDPMemoryReactor()
        results = checks if checks is not None else {}

        def check(front):
            return succeed(results.get(front.name, True))

        service = DnsService(reactor, cluster(), check=check)
        return reactor, service, results

    def test_is_a_service(self):
        """DnsService provides IService."""
        _, service, _ = self.make()
        verifyObject(IService, service)

    def test_listens_udp_and_tcp(self):
        """startService listens on the configured address with UDP and TCP."""
        reactor, service, _ = self.make()
        service.startService()
        [udp_port] = reactor.udpPorts
        self.assertEqual((udp_port.port, udp_port.interface), (5353, "127.0.0.1"))
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (5353, "127.0.0.1"))
        self.assertIsInstance(factory, DnsStreamFactory)

    def test_stop_closes_ports(self):
        """stopService stops both ports and its Deferred fires."""
        reactor, service, _ = self.make()
        service.startService()
        d = service.stopService()
        self.successResultOf(d)
        self.assertTrue(reactor.udpPorts[0].stopped)
        self.assertFalse(service.running)

    def test_answers_follow_health(self):
        """A balancer failing its check leaves the answers; it comes back when healthy."""
        reactor, service, results = self.make()
        service.startService()
        proto = reactor.udpPorts[0].protocol
        transport = FakeDatagramTransport()
        proto.makeConnection(transport)

        def ask():
            proto.datagramReceived(query(NAME), ("127.0.0.1", 1))
            return sorted(answers(parse(transport.written[-1][0])))

        self.assertEqual(ask(), ["192.0.2.1", "192.0.2.2"])
        results["lb1"] = False
        reactor.advance(2.0)
        self.assertEqual(ask(), ["192.0.2.2"])
        results["lb1"] = True
        reactor.advance(2.0)
        self.assertEqual(ask(), ["192.0.2.1", "192.0.2.2"])

    def test_fail_open(self):
        """With no healthy balancer, all are answered and a warning is logged."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor, service, _ = self.make({"lb1": False, "lb2": False, "lb3": False})
        service.startService()
        proto = reactor.udpPorts[0].protocol
        transport = FakeDatagramTransport()
        proto.makeConnection(transport)
        proto.datagramReceived(query(NAME), ("127.0.0.1", 1))
        self.assertEqual(sorted(answers(parse(transport.written[-1][0]))), ["192.0.2.1", "192.0.2.2"])
        self.assertTrue(any("fail open" in e.get("log_format", "") for e in events))

    def test_tcp_listen_failure_closes_udp(self):
        """If TCP cannot listen, the UDP port is closed again and the error raised."""
        reactor, service, _ = self.make()

        def refuse(*args, **kwargs):
            raise CannotListenError("127.0.0.1", 5353, OSError("in use"))

        reactor.listenTCP = refuse
        self.assertRaises(CannotListenError, service.startService)
        self.assertTrue(reactor.udpPorts[0].stopped)
        self.assertFalse(service.running)

    def test_udp_receive_buffer(self):
        """The UDP socket is asked for a larger receive buffer; failure is harmless."""
        calls = []

        class FakeSocket:
            def setsockopt(self, level, option, value):
                calls.append((level, option, value))
                raise OSError("not allowed")

        port = FakeUDPPort(5353, None, "", 0)
        port.socket = FakeSocket()
        _enlarge_receive_buffer(port)
        self.assertEqual(calls, [(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)])
        _enlarge_receive_buffer(FakeUDPPort(5353, None, "", 0))

    def test_needs_dns_section(self):
        """A config without [dns] is refused at construction."""
        config = attrs.evolve(cluster(), dns=None)
        self.assertRaises(ValueError, DnsService, UDPMemoryReactor(), config)
