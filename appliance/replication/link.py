"""
A node's connection to one peer (another session server, or a witness
balancer): log in, keep the link alive with heartbeats, reconnect with
backoff, and time calls out.

The heartbeat is the lease renewal (C{renew}): its answer and the moment it
was asked go to C{on_beat}, which decides what they mean.  A link that misses
C{misses} heartbeats in a row, or whose call times out, is cut: PB calls on
one connection are ordered, and a stuck call would hold every later one
behind it.  Losing a peer is a normal event, reported to C{on_down}; a new
login is reported to C{on_up}; a refused connection (nothing listens there)
to C{on_refused}.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.spread import pb

from appliance.replication.banana import ClientBroker

log = Logger()


class PeerUnavailable(Exception):
    """
    The link to the peer is down; the call was not sent.
    """


class PeerLink:
    def __init__(
        self,
        clock,
        connect: Callable[[pb.PBClientFactory], defer.Deferred],
        me: str,
        peer: str,
        secret: str,
        heartbeat_interval: float,
        misses: int,
        call_timeout: float,
        on_up: Callable[[str], None],
        on_down: Callable[[str], None],
        on_beat: Callable[[str, Tuple, float], None] = lambda peer, answer, asked_at: None,
        on_refused: Callable[[str], None] = lambda peer: None,
        now: Optional[Callable[[], float]] = None,
        renew_args: Callable[[], tuple] = tuple,
    ):
        """
        C{me} is the login name (C{NAME/INCARNATION}, see L{relogin});
        C{now} the monotonic clock heartbeats are timed by (default: the
        reactor's).
        """
        self.clock = clock
        self._connect = connect
        self.me = me
        self.peer = peer
        self.secret = secret
        self.heartbeat_interval = heartbeat_interval
        self.misses = misses
        self.call_timeout = call_timeout
        self.on_up = on_up
        self.on_down = on_down
        self.on_beat = on_beat
        self.on_refused = on_refused
        self.now = now if now is not None else clock.seconds
        self.renew_args = renew_args
        self.remote: Optional[pb.RemoteReference] = None
        self.load = 0
        self._broker = None
        self._running = False
        self._delay = 0.1
        self._retry = None
        self._beat = None
        self._missed = 0
        self._attempt: Optional[defer.Deferred] = None

    @property
    def connected(self) -> bool:
        return self.remote is not None

    def start(self) -> None:
        self._running = True
        self._try()

    def relogin(self, me: str) -> None:
        """
        Log in again under another name (a new incarnation): the current
        connection is dropped and a new one made at once.
        """
        self.me = me
        if self._attempt is not None:
            self._attempt.cancel()
        self._cut()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._delay = 0.1
        if self._running:
            self._try()

    def stop(self) -> None:
        self._running = False
        for call in (self._retry, self._beat):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._beat = None
        if self._attempt is not None:
            self._attempt.cancel()
        self._cut()

    def _try(self) -> None:
        self._retry = None
        if not self._running:
            return
        factory = pb.PBClientFactory()
        factory.protocol = ClientBroker
        factory.noisy = False
        creds = UsernamePassword(self.me.encode("utf-8"), self.secret.encode("utf-8"))
        connected = []

        def login(proto):
            connected.append(proto)
            return factory.login(creds)

        attempt = self._attempt = self._connect(factory)
        attempt.addCallback(login)
        attempt.addTimeout(self.call_timeout, self.clock)
        attempt.addCallbacks(self._logged_in, self._failed, callbackArgs=(factory,), errbackArgs=(connected,))

    def _failed(self, failure, connected=()) -> None:
        self._attempt = None
        for proto in connected:
            # A refused or unanswered login leaves the connection up on
            # both sides unless it is closed here (one already lost, by a
            # failed TLS handshake say, is not closed twice).
            if proto.transport is not None and not proto.disconnected:
                proto.transport.abortConnection()
        if not self._running:
            return
        if failure.check(error.ConnectionRefusedError):
            self.on_refused(self.peer)
        if not failure.check(
            error.ConnectError, error.ConnectionLost, error.ConnectionDone, defer.TimeoutError,
            pb.PBConnectionLost, defer.CancelledError,
        ):
            log.failure("login to {peer} failed", failure, peer=self.peer)
        self._schedule()

    def _schedule(self) -> None:
        if self._running and self._retry is None:
            self._retry = self.clock.callLater(self._delay, self._try)
            # Capped well under a lease: a peer that restarts must be
            # renewing leases again before anyone's lapses.
            self._delay = min(self._delay * 2, max(0.1, 2 * self.heartbeat_interval))

    def _logged_in(self, remote, factory) -> None:
        self._attempt = None
        if not self._running:
            remote.broker.transport.loseConnection()
            return
        self.remote = remote
        self._broker = remote.broker
        self._delay = 0.1
        self._missed = 0
        remote.notifyOnDisconnect(self._lost)
        log.info("replication link to {peer} up", peer=self.peer)
        self.on_up(self.peer)
        if self.remote is remote:
            self._heartbeat()

    def _lost(self, remote) -> None:
        if self.remote is not remote:
            return
        self.remote = None
        self._broker = None
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        log.info("replication link to {peer} down", peer=self.peer)
        self.on_down(self.peer)
        self._schedule()

    def _cut(self) -> None:
        """
        Drop the connection at once; L{_lost} follows.
        """
        broker = self._broker
        if broker is not None and broker.transport is not None:
            broker.transport.abortConnection()
        if self.remote is not None:
            self._lost(self.remote)

    def _heartbeat(self) -> None:
        self._beat = None
        if self.remote is None:
            return
        asked_at = self.now()

        def pong(answer):
            self._missed = 0
            if isinstance(answer, (list, tuple)) and len(answer) >= 2 and type(answer[1]) is int:
                self.load = answer[1]
            self.on_beat(self.peer, answer, asked_at)

        def missed(failure):
            self._missed += 1
            if self._missed >= self.misses and self.remote is not None:
                log.warn("{peer} missed {n} heartbeats; cutting the link", peer=self.peer, n=self._missed)
                self._cut()

        d = self._remote_call(self.remote, "renew", *self.renew_args())
        d.addTimeout(self.heartbeat_interval, self.clock)
        d.addCallbacks(pong, missed)
        if self.remote is not None:
            self._beat = self.clock.callLater(self.heartbeat_interval, self._heartbeat)

    def call(self, name: str, *args) -> defer.Deferred:
        """
        Call C{name} on the peer.  Fails with L{PeerUnavailable} when the
        link is down and cuts the link when the call times out.
        """
        remote = self.remote
        if remote is None:
            return defer.fail(PeerUnavailable(self.peer))
        d = self._remote_call(remote, name, *args)
        d.addTimeout(self.call_timeout, self.clock)

        def failed(failure):
            if failure.check(defer.TimeoutError) and self.remote is remote:
                log.warn("{peer} did not answer {name} in time; cutting the link", peer=self.peer, name=name)
                self._cut()
            if failure.check(pb.PBConnectionLost, pb.DeadReferenceError, defer.TimeoutError, error.ConnectionLost):
                raise PeerUnavailable(self.peer)
            return failure

        return d.addErrback(failed)

    @staticmethod
    def _remote_call(remote, name: str, *args) -> defer.Deferred:
        """
        C{callRemote}, but a link going down while it is called fails the
        Deferred instead of raising (PB raises L{pb.DeadReferenceError}
        synchronously on a broker that is disconnecting).
        """
        return defer.maybeDeferred(remote.callRemote, name, *args)
