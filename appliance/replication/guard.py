"""
The replication port's protection against whoever can reach it.

Anyone who reaches the port can open a PB connection.  Until it has logged
in, a connection may send only L{PRELOGIN_BYTES} (a login takes a few
hundred) and must log in before a deadline; a refused login closes it.  On
every connection, lists nested deeper than L{MAX_DEPTH} are refused before
jelly (which decodes them recursively) sees them, and any other breach of
the protocol closes the connection instead of raising out of
C{dataReceived}.  Each such event is one log line, rate-limited per kind so
that a flood of them cannot flood the log.  After login a peer keeps the
limits it had: Banana's own, and the avatar's (batches up to the configured
size).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

from twisted.cred import error, portal
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.spread import banana, pb

from appliance.replication.banana import PlainCalls

log = Logger()

#: Bytes a connection may send before it has logged in.
PRELOGIN_BYTES = 16 * 1024
#: Deepest list nesting accepted; PB's own messages nest about five deep.
MAX_DEPTH = 32
#: A kind of event is logged at most once per this many seconds.
LOG_INTERVAL = 10.0


class LoginRefused(pb.Error, error.UnauthorizedLogin):
    """
    The login was refused (unknown node or wrong secret).  A L{pb.Error},
    so neither side logs a traceback for it.
    """


class Throttle:
    """
    Log lines of each kind at most once per C{interval}; the next line of a
    kind says how many were left out since the last.
    """

    def __init__(self, clock: IReactorTime, interval: float = LOG_INTERVAL):
        self.clock = clock
        self.interval = interval
        self._kinds: Dict[str, Tuple[float, int]] = {}

    def warn(self, kind: str, text: str, **fields) -> bool:
        """
        Log C{text} (a format string over C{fields}) unless a line of
        C{kind} was logged less than C{interval} ago; returns whether it
        was logged.
        """
        now = self.clock.seconds()
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._kinds[kind] = (last[0], last[1] + 1)
            return False
        left_out = last[1] if last is not None else 0
        self._kinds[kind] = (now, 0)
        if left_out:
            text += " ({left_out} more like it not logged in the last {interval:.0f}s)"
        log.warn(text, left_out=left_out, interval=self.interval, **fields)
        return True


class _Nesting(list):
    """
    Banana's stack of lists being decoded, refusing to grow past C{limit}.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def append(self, item) -> None:
        if len(self) >= self.limit:
            raise banana.BananaError(f"lists nested deeper than {self.limit}")
        list.append(self, item)


def _printable(value: object, size: int = 64) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return repr(str(value)[:size])


class GuardedBroker(PlainCalls, pb.Broker):
    """
    A server-side PB broker that enforces the rules above; its factory is
    a L{GuardedServerFactory}.  It parses Banana by position and passes
    plain chunked calls without jelly (L{PlainCalls}: the same limits and
    values, less copying).
    """

    factory: "GuardedServerFactory"
    authenticated = False

    def __init__(self, isClient: int = 0, security=pb.globalSecurity):
        super().__init__(isClient, security)
        self.listStack = _Nesting(MAX_DEPTH)
        self._received = 0
        self._closed = False
        self._deadline = None

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        self._deadline = factory.clock.callLater(factory.login_timeout, self._late)

    def _late(self) -> None:
        self._deadline = None
        self.refuse("deadline", f"not logged in within {self.factory.login_timeout:g}s")

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if not self.authenticated:
            self._received += len(data)
            if self._received > self.factory.prelogin_bytes:
                self.refuse("budget", f"sent over {self.factory.prelogin_bytes} bytes without logging in")
                return
        try:
            super().dataReceived(data)
        except Exception as e:
            # Nothing of ours runs unguarded in here (PB catches what a
            # remote method raises): this is the peer breaking the protocol.
            self.refuse("protocol", f"broke the protocol: {type(e).__name__}: {str(e)[:100]}")

    def refuse(self, kind: str, why: str) -> None:
        """
        Close the connection at once, with one log line (rate-limited per
        C{kind} of breach).
        """
        if self._closed:
            return
        self._closed = True
        self.factory.throttle.warn(kind, "replication connection from {client} closed: {why}", client=self._client(), why=why)
        self.transport.abortConnection()

    def _client(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(peer, "host", peer))

    def logged_in(self, result):
        """
        The login succeeded: the pre-login rules no longer apply.
        """
        self.authenticated = True
        self._cancel_deadline()
        return result

    def login_refused(self, failure, credentials):
        """
        The login failed: one rate-limited warning, the peer is told
        L{LoginRefused} and the connection closes once that is sent.
        """
        failure.trap(error.LoginFailed)
        self.factory.throttle.warn(
            "login",
            "replication login refused for {user} from {client}: unknown node or wrong secret",
            user=_printable(getattr(credentials, "username", "(anonymous)")),
            client=self._client(),
        )
        self.factory.clock.callLater(0, self._close_quietly)
        raise LoginRefused("login refused")

    def _close_quietly(self) -> None:
        if not self._closed and self.transport is not None:
            self._closed = True
            self.transport.loseConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)


class _ConnectionPortal(portal.Portal):
    """
    The portal of one connection: tells its broker how the login went.
    """

    def __init__(self, realm, checkers: Sequence, broker: GuardedBroker):
        super().__init__(realm, checkers)
        self.broker = broker

    def login(self, credentials, mind, *interfaces):
        d = super().login(credentials, mind, *interfaces)
        d.addCallbacks(self.broker.logged_in, self.broker.login_refused, errbackArgs=(credentials,))
        return d


class GuardedServerFactory(pb.PBServerFactory):
    """
    A PB server factory whose connections log in to C{realm} through
    C{checkers} under the rules above.  C{clock} runs the login deadline
    (C{login_timeout} seconds) and the log rate limit.
    """

    protocol: Callable[..., GuardedBroker] = GuardedBroker

    def __init__(
        self,
        realm,
        checkers: Sequence,
        clock: IReactorTime,
        login_timeout: float,
        prelogin_bytes: int = PRELOGIN_BYTES,
    ):
        super().__init__(portal.Portal(realm, checkers))
        self.realm = realm
        self.checkers = list(checkers)
        self.clock = clock
        self.login_timeout = login_timeout
        self.prelogin_bytes = prelogin_bytes
        self.throttle = Throttle(clock)

    def buildProtocol(self, addr) -> GuardedBroker:
        broker = self.protocol(isClient=0, security=self.security)
        broker.factory = self
        root = pb.IPBRoot(_ConnectionPortal(self.realm, self.checkers, broker))
        broker.setNameForLocal("root", root.rootObject(broker))
        return broker
