"""
Connections to session servers: a keep-alive pool, and the protocol that
relays one response at a time back to the client, parsing only its framing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Set

from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.config import Address

from .chunked import ChunkedScanner
from .flow import Throttle, send_now
from .framing import CHUNKED, HEAD_END, LENGTH, NO_BODY, UNTIL_CLOSE
from .response import parse_response_head

if TYPE_CHECKING:  # pragma: no cover
    from .exchange import Exchange

MAX_RESPONSE_HEAD = 64 * 1024

# How long a pooled connection may stay idle.  The session servers are
# twisted.web sites, whose HTTPChannel closes a connection idle for
# HTTPFactory.timeOut (60 s by default); closing ours well before (the sweep
# runs at most a second late) means a server hardly ever closes one under a
# request.
POOL_IDLE_TIME = 15.0
# A request that must not be sent twice (POST, PATCH...) goes only on a
# connection that finished an exchange less than this long ago, or on a new
# one: like HAProxy's "http-reuse safe", it never meets a server that is
# closing an idle connection at that moment.
SAFE_REUSE_IDLE = 1.0

_HEAD, _BODY = 0, 1


class BadResponse(Exception):
    """
    A server sent something that is not an HTTP/1.x response we can relay.
    """


class ResponseTimeout(Exception):
    """
    A server did not start answering within C{response_timeout}.
    """


class ServerGone(Exception):
    """
    The balancer's witness found the server silent (dead, paused or cut
    off): what it was asked will not be answered.
    """


# A session server marks a 503 with this header when it did nothing with the
# request (it may not serve it now): the request may go to another server.
NOT_SERVED = b"\r\nappliance-not-served:"


class BackendProtocol(Protocol):
    """
    One connection to a session server, carrying one exchange at a time.

    While attached (L{attach}) to an L{Exchange} it writes the response
    straight to the client's transport and reports to the exchange through
    the methods that C{exchange.py} lists: the start of a longer answer
    (C{response_started}), the end (C{response_done}), a server that did not
    serve the request (C{server_declined}) or a failure (C{backend_failed}).
    """

    log = Logger()

    def __init__(self, pool: "BackendPool", node: str):
        self.pool = pool
        self.node = node
        self.exchange: Optional["Exchange"] = None
        self.deadline: Optional[float] = None
        self.idle_since = 0.0
        self.timed_out = False
        self._buf = b""
        self._state = _HEAD
        self._left = 0
        self._framing = NO_BODY
        self._scanner: Optional[ChunkedScanner] = None
        self._reusable = False
        self._producing = False
        self._received = False
        # Taken from the pool's idle connections (rather than opened for the
        # request it carries): the server may have closed it meanwhile.
        self.reused = False
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True
        self.throttle = Throttle(self.transport)
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):  # pragma: no cover
            pass

    def attach(self, exchange: "Exchange") -> None:
        self.exchange = exchange
        self._buf = b""
        self._state = _HEAD
        self._received = False
        self.timed_out = False

    def stale(self) -> bool:
        """
        Whether the current exchange failed the way a kept-alive connection
        closed by its server while idle does: it was taken from the pool,
        and nothing of this exchange's answer came.
        """
        return self.reused and not self._received

    def dataReceived(self, data: bytes) -> None:
        fe = self.exchange
        if fe is None:
            # Nothing was asked: a server talking out of turn is not reusable.
            self.transport.loseConnection()
            return
        self._received = True
        if self._state == _BODY:
            self._body(fe, data)
            return
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(HEAD_END)
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._fail(BadResponse("response head too large"))
                else:
                    self._buf = buf
                return
            head = parse_response_head(
                buf[:end], fe.method, fe.cookie_name, fe.secure, fe.keep_alive
            )
            if head is None:
                self._fail(BadResponse("malformed response head"))
                return
            if head.status >= 200:
                if head.status == 503 and NOT_SERVED in buf[:end].lower():
                    self.exchange = None
                    self.transport.abortConnection()
                    fe.server_declined(self)
                    return
                break
            if head.status == 101:
                self._fail(BadResponse("unexpected protocol switch"))
                return
            send_now(fe.transport, buf[: end + 4] if head.relay is None else head.relay)
            buf = buf[end + 4 :]
        self._buf = b""
        self.deadline = None
        requests = fe.balancer.requests
        if requests is not None:
            key = (self.node, head.status)
            requests[key] = requests.get(key, 0) + 1
        framing = head.framing
        relay = head.relay
        if framing == LENGTH and head.session is None and len(buf) - end - 4 == head.length:
            # The common case: the whole answer in one read, relayed as it
            # came (or with its head rewritten), and the exchange is over
            # (nothing to reset: _finish without its work).
            send_now(fe.transport, buf if relay is None else relay + buf[end + 4 :])
            self.exchange = None
            fe.response_done(self, head.reusable)
            return
        self._reusable = head.reusable
        fe.response_started(head)
        self._framing = framing
        if framing == LENGTH:
            n = head.length
            got = len(buf) - end - 4
            if relay is None:
                relay = buf[: end + 4]
            if got >= n:
                if got > n:
                    self._reusable = False
                send_now(fe.transport, relay + buf[end + 4 : end + 4 + n])
                self._finish()
            else:
                send_now(fe.transport, relay + buf[end + 4 :])
                self._left = n - got
                self._state = _BODY
                self._produce(fe)
            return
        rest = buf[end + 4 :]
        if relay is None:
            relay = buf[: end + 4]
        if framing == NO_BODY:
            send_now(fe.transport, relay)
            if rest:
                self._reusable = False
            self._finish()
        else:
            send_now(fe.transport, relay)
            self._state = _BODY
            if framing == CHUNKED:
                self._scanner = ChunkedScanner()
            else:
                # Framed by the end of this connection: the client's copy
                # ends only when the client connection does too, once this
                # one closes (response_done), so no later answer can be
                # taken for part of this body.
                fe.keep_alive = False
            self._produce(fe)
            if rest:
                self._body(fe, rest)

    def _body(self, fe: "Exchange", data: bytes) -> None:
        framing = self._framing
        if framing == LENGTH:
            n = self._left
            if len(data) >= n:
                if len(data) > n:
                    self._reusable = False
                    data = data[:n]
                send_now(fe.transport, data)
                self._finish()
            else:
                self._left = n - len(data)
                send_now(fe.transport, data)
        elif framing == CHUNKED:
            try:
                k = self._scanner.feed(data)
            except ValueError as e:
                self._fail(BadResponse(str(e)))
                return
            if k < 0:
                send_now(fe.transport, data)
            else:
                if k < len(data):
                    self._reusable = False
                send_now(fe.transport, data[:k])
                self._finish()
        else:
            send_now(fe.transport, data)

    def _produce(self, fe: "Exchange") -> None:
        """
        A response longer than one read: let the client's transport pause us
        when it cannot keep up.
        """
        if not self._producing and fe.transport.producer is None:
            fe.transport.registerProducer(self.throttle, True)
            self._producing = True

    def _unproduce(self, fe: "Exchange") -> None:
        if self._producing:
            self._producing = False
            if fe.transport.producer is self.throttle:
                fe.transport.unregisterProducer()
            self.transport.resumeProducing()

    def _finish(self) -> None:
        fe = self.exchange
        self._state = _HEAD
        self._scanner = None
        if self._producing:
            self._unproduce(fe)
        self.exchange = None
        fe.response_done(self, self._reusable)

    def _fail(self, reason: Exception) -> None:
        fe = self.exchange
        self._state = _HEAD
        self._unproduce(fe)
        self.exchange = None
        self.transport.abortConnection()
        fe.backend_failed(self, Failure(reason))

    def connectionLost(self, reason: Failure = None) -> None:
        self.connected = False
        self.pool.lost(self)
        fe = self.exchange
        if fe is None:
            return
        if self._state == _BODY and self._framing == UNTIL_CLOSE:
            self._reusable = False
            self._finish()
            return
        self._unproduce(fe)
        self.exchange = None
        if self.timed_out:
            reason = Failure(ResponseTimeout(self.node))
        fe.backend_failed(self, reason)


class _ConnectFactory(ClientFactory):
    """
    One connection attempt; reports to its waiter, or parks the connection
    in the pool when the waiter gave up meanwhile.
    """

    noisy = False

    def __init__(self, pool: "BackendPool", node: str, waiter: "Exchange"):
        self.pool = pool
        self.node = node
        self.waiter: Optional["Exchange"] = waiter

    def buildProtocol(self, addr) -> BackendProtocol:
        proto = _PoolProtocol(self.pool, self.node)
        proto.factory = self
        return proto

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self.pool.connecting.pop(connector, None)
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.server_connect_failed(self.node, reason)


class _PoolProtocol(BackendProtocol):
    def connectionMade(self) -> None:
        BackendProtocol.connectionMade(self)
        self.pool.connecting.pop(getattr(self.transport, "connector", None), None)
        self.pool.opened(self)
        factory = self.factory
        waiter, factory.waiter = factory.waiter, None
        if waiter is None:
            self.pool.release(self)
        else:
            waiter.server_connected(self)


class BackendPool:
    """
    Keep-alive connections to each server, newest reused first.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        addresses: Dict[str, Address],
        connect_timeout: float,
        max_idle: int = 256,
        idle_time: float = POOL_IDLE_TIME,
        safe_idle: float = SAFE_REUSE_IDLE,
    ):
        self.reactor = reactor
        self.addresses = addresses
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_time = idle_time
        self.safe_idle = safe_idle
        self.idle: Dict[str, List[BackendProtocol]] = {name: [] for name in addresses}
        self.all: Set[BackendProtocol] = set()
        # Connection attempts under way, and the server each is to.
        self.connecting: Dict[object, str] = {}

    def take(self, node: str, now: Optional[float] = None, safe: bool = False) -> Optional[BackendProtocol]:
        """
        The most recently used idle connection to C{node}, if any.  With
        C{safe}, only one idle less than C{safe_idle} seconds (else
        C{None}: the caller opens a new one).  Connections past
        C{idle_time} are closed rather than used, even before the sweep.
        """
        idle = self.idle[node]
        if not idle:
            return None
        if now is None:
            now = self.reactor.seconds()
        if safe and idle[-1].idle_since < now - self.safe_idle:
            return None
        limit = now - self.idle_time
        while idle:
            conn = idle.pop()
            if conn.idle_since < limit:
                conn.transport.loseConnection()
            elif conn.connected:
                conn.reused = True
                return conn
        return None

    def connect(self, node: str, waiter: "Exchange") -> _ConnectFactory:
        address = self.addresses[node]
        factory = _ConnectFactory(self, node, waiter)
        connector = self.reactor.connectTCP(address.host, address.port, factory, timeout=self.connect_timeout)
        self.connecting[connector] = node
        return factory

    def abandon(self, node: str) -> int:
        """
        C{node} is gone: every exchange with it fails now (the requests
        waiting on it are retried or answered as L{may_retry} says), and its
        idle connections and connection attempts are dropped.  Returns how
        many requests were waiting on it.
        """
        failed = 0
        for conn in [c for c in self.all if c.node == node]:
            if conn.exchange is not None:
                failed += 1
                conn._fail(ServerGone(node))
            else:
                conn.transport.abortConnection()
        self.idle[node] = []
        for connector in [c for c, to in self.connecting.items() if to == node]:
            # The reactor then reports the attempt failed to its factory.
            connector.stopConnecting()
        return failed

    def opened(self, conn: BackendProtocol) -> None:
        self.all.add(conn)

    def release(self, conn: BackendProtocol, now: Optional[float] = None) -> None:
        idle = self.idle[conn.node]
        if not conn.connected or len(idle) >= self.max_idle:
            conn.transport.loseConnection()
            return
        conn.exchange = None
        conn.deadline = None
        conn.idle_since = self.reactor.seconds() if now is None else now
        idle.append(conn)

    def lost(self, conn: BackendProtocol) -> None:
        self.all.discard(conn)
        idle = self.idle.get(conn.node)
        if idle and conn in idle:
            idle.remove(conn)

    def sweep(self, now: float) -> None:
        """
        Close idle connections kept too long (before the server closes them
        under a request) and abort servers past their response deadline.
        """
        limit = now - self.idle_time
        for idle in self.idle.values():
            while idle and idle[0].idle_since < limit:
                idle.pop(0).transport.loseConnection()
        for conn in list(self.all):
            if conn.deadline is not None and conn.deadline <= now and conn.exchange is not None:
                conn.deadline = None
                conn.timed_out = True
                conn.transport.abortConnection()

    def close(self) -> None:
        for connector in list(self.connecting):
            connector.stopConnecting()
        self.connecting.clear()
        for conn in list(self.all):
            conn.transport.abortConnection()
        for idle in self.idle.values():
            del idle[:]
