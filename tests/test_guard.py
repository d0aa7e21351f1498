"""
The replication port before and after login (appliance.replication.guard):
login deadline, pre-login byte budget, deep nesting, refused logins logged
as one rate-limited line; in memory and against a real session server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.spread import banana, pb
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from appliance.core.session import Full
from appliance.replication import guard, peer, wire

from .helpers import RealNodes, health, wait_for
from .test_peer import SID, make_node

TIMEOUT = 5.0


def string(data: bytes) -> bytes:
    out = []
    banana.int2b128(len(data), out.append)
    return b"".join(out) + banana.STRING + data


def list_of(n: int) -> bytes:
    out = []
    banana.int2b128(n, out.append)
    return b"".join(out) + banana.LIST


def integer(n: int) -> bytes:
    out = []
    banana.int2b128(n, out.append)
    return b"".join(out) + banana.INT


#: What a PB client sends first: the dialect, then its version.
HELLO = string(b"pb") + list_of(2) + string(b"version") + integer(6)


def deep_login(depth: int) -> bytes:
    """
    A call of the root object's login whose argument is a list nested
    C{depth} deep (jelly would unpack it recursively).
    """
    args = list_of(2) + string(b"tuple") + list_of(1) * depth + integer(0)
    kwargs = list_of(1) + string(b"dictionary")
    return list_of(7) + string(b"message") + integer(1) + string(b"root") + string(b"login") + integer(1) + args + kwargs


def many_strings(count: int) -> bytes:
    return list_of(count) + string(b"a") * count


class LogCapture:
    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, namespace="appliance.replication.guard"):
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == namespace]


class GuardTests(SynchronousTestCase):
    def setUp(self):
        self.node, cluster = make_node()
        self.clock = Clock()
        self.factory = peer.server_factory(
            self.node, cluster.node_names, cluster.cluster.secret, self.node.limit, self.clock, TIMEOUT
        )
        self.logs = LogCapture(self)

    def raw(self):
        """
        A server broker on a StringTransport, as a client that never speaks PB properly sees it.
        """
        address = IPv4Address("TCP", "198.51.100.7", 40000)
        broker = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        broker.makeConnection(transport)
        return broker, transport

    def pb_client(self, secret=b"test-secret-123", user=b"s1/5"):
        client_factory = pb.PBClientFactory()
        client, server, pump = connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), lambda: client_factory.buildProtocol(None)
        )
        d = client_factory.login(UsernamePassword(user, secret))
        pump.flush()
        return d, client, server, pump

    def test_login_deadline(self):
        """A connection that does not log in within the deadline is closed, with one log line."""
        broker, transport = self.raw()
        self.clock.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        (line,) = self.logs.lines()
        self.assertIn("198.51.100.7 closed: not logged in within 5s", line)

    def test_prelogin_byte_budget(self):
        """A pre-login frame of many small strings is refused once it passes the budget, not accepted whole."""
        broker, transport = self.raw()
        frame = HELLO + many_strings(200_000)
        sent = 0
        while not transport.disconnecting and sent < len(frame):
            broker.dataReceived(frame[sent : sent + 4096])
            sent += 4096
        self.assertTrue(transport.disconnected)
        self.assertLessEqual(sent, guard.PRELOGIN_BYTES + 4096)
        self.assertIn("sent over 16384 bytes without logging in", self.logs.lines()[0])

    def test_deep_nesting_before_login(self):
        """Lists nested 5,000 deep close the connection with one line instead of a RecursionError."""
        broker, transport = self.raw()
        broker.dataReceived(HELLO + deep_login(5000))
        self.assertTrue(transport.disconnected)
        (line,) = self.logs.lines()
        self.assertIn("broke the protocol: BananaError: lists nested deeper than 32", line)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_deep_nesting_after_login(self):
        """A logged-in peer that sends lists nested too deep is cut the same way."""
        d, client, server, pump = self.pb_client()
        self.successResultOf(d)
        client.transport.write(deep_login(5000))
        pump.flush()
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(len(self.logs.lines()), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_refused_login_is_one_line(self):
        """A wrong secret is refused with one warning line and no traceback; the connection then closes."""
        d, client, server, pump = self.pb_client(secret=b"wrong-secret")
        self.failureResultOf(d).trap(UnauthorizedLogin)
        self.assertEqual(self.flushLoggedErrors(), [])
        (line,) = self.logs.lines()
        self.assertIn("replication login refused for 's1/5'", line)
        self.assertNotIn("Traceback", "\n".join(formatEvent(e) for e in self.logs.events))
        self.clock.advance(0)
        self.assertTrue(server.transport.disconnecting)

    def test_refused_logins_rate_limited(self):
        """A burst of refused logins logs one line; the next, after the interval, counts the ones left out."""
        for _ in range(5):
            d, *_ = self.pb_client(user=b"intruder")
            self.failureResultOf(d).trap(UnauthorizedLogin)
        self.assertEqual(len(self.logs.lines()), 1)
        self.clock.advance(guard.LOG_INTERVAL)
        d, *_ = self.pb_client(user=b"intruder")
        self.failureResultOf(d).trap(UnauthorizedLogin)
        first, second = self.logs.lines()
        self.assertIn("'intruder'", first)
        self.assertIn("(4 more like it not logged in the last 10s)", second)

    def test_logged_in_peer_keeps_its_limits(self):
        """After login neither the deadline nor the byte budget applies: a large batch is applied."""
        d, client, server, pump = self.pb_client()
        remote = self.successResultOf(d)
        self.clock.advance(TIMEOUT * 2)
        big = b'"' + b"x" * (200 * 1024) + b'"'
        call = remote.callRemote("replicate", wire.split(wire.encode([Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {"b": big})])))
        pump.flush()
        self.assertEqual(wire.decode_results(self.successResultOf(call), 1), [wire.Result.OK])
        self.assertFalse(server.transport.disconnecting)
        self.assertEqual(self.logs.lines(), [])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


LOGIN = """
import sys
from twisted.cred.credentials import UsernamePassword
from twisted.internet import reactor
from twisted.spread import pb
factory = pb.PBClientFactory()
reactor.connectTCP("127.0.0.1", int(sys.argv[1]), factory, timeout=5)
d = factory.login(UsernamePassword(b"intruder", b"not-the-secret"))
d.addCallbacks(lambda _: print("in"), lambda f: print("refused", f.type.__name__ if isinstance(f.type, type) else f.type))
d.addBoth(lambda _: reactor.stop())
reactor.callLater(10, reactor.stop)
reactor.run()
"""


class RealServerGuardTests(SynchronousTestCase):
    def setUp(self):
        self.nodes = RealNodes(self, names=("s1",))
        self.port = self.nodes.ports["s1"][1]
        self.pid = health(self.nodes.ports["s1"][0])["pid"]

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(s.close)
        return s

    def closed_by_server(self, s) -> bool:
        """
        Read until the server closes (True) or 10 s pass (False).
        """
        s.settimeout(10)
        try:
            while s.recv(65536):
                pass
        except socket.timeout:
            return False
        except ConnectionResetError:
            pass
        return True

    def test_hostile_connections(self):
        """A real node closes an idle, a flooding and a deeply nested connection and refuses a bad login, one line each."""
        idle = self.connect()
        before = rss_kib(self.pid)
        flood = self.connect()
        frame = HELLO + many_strings(2_000_000)
        try:
            flood.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertTrue(self.closed_by_server(flood))
        self.assertLess(rss_kib(self.pid) - before, 8 * 1024)
        deep = self.connect()
        deep.sendall(HELLO + deep_login(5000))
        self.assertTrue(self.closed_by_server(deep))
        self.assertTrue(self.closed_by_server(idle))
        login = subprocess.run(
            [sys.executable, "-c", LOGIN, str(self.port)], capture_output=True, text=True, timeout=30,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.assertIn("refused", login.stdout, login.stderr)
        wait_for(lambda: "login refused for 'intruder'" in self.nodes.log("s1"), 10, "the refusal in the log")
        log = self.nodes.log("s1")
        self.assertEqual(log.count("replication connection from 127.0.0.1 closed"), 3, log)
        self.assertEqual(log.count("replication login refused"), 1, log)
        for bad in ("Traceback", "Unhandled Error", "RecursionError"):
            self.assertNotIn(bad, log)
