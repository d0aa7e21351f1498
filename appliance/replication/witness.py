"""
Votes: the PB face of a voter that is not a session server (a witness
balancer), and the one way every voter answers a vote.

A witness grants session servers their leases and votes on their deaths
exactly like a server does (L{appliance.core.membership.Voter}); it holds no
sessions.  It also tells its balancer which servers went silent (no renewal
for a whole lease: dead, paused or cut off from it), so that requests in
flight to them do not wait for the response timeout.
"""

from __future__ import annotations

from typing import Callable, Collection, Dict, Tuple

from twisted.cred import portal
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from appliance.core.membership import Voter
from appliance.replication.peer import Refused, SecretChecker, _incarnation

log = Logger()


def vote(voter: Voter, server: str, incarnation: int, now: Callable[[], float], probe) -> defer.Deferred:
    """
    C{voter}'s vote on C{incarnation} of C{server}.  While its promise still
    binds, a refused connection to the server's port (C{probe(server)}
    fires C{True}) proves it gone.  (A vote is asked only by a node that
    cannot reach the server, so the probe costs little.)
    """
    if voter.vote(server, incarnation, now()):
        return defer.succeed(True)

    def probed(refused: bool) -> bool:
        if refused:
            voter.proof(server, incarnation)
        return voter.vote(server, incarnation, now())

    return probe(server).addCallback(probed)


class _Probe(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _ProbeFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, done: defer.Deferred):
        self.done = done

    def buildProtocol(self, addr):
        if not self.done.called:
            self.done.callback(False)
        return _Probe()

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.done.called:
            self.done.callback(reason.check(error.ConnectionRefusedError) is not None)


def probe(reactor, host: str, port: int, timeout: float) -> defer.Deferred:
    """
    Fires C{True} when a TCP connection to C{host:port} is refused (nothing
    listens there), C{False} when it is accepted or times out.
    """
    done: defer.Deferred = defer.Deferred()
    reactor.connectTCP(host, port, _ProbeFactory(done), timeout=timeout)
    return done


class Witness:
    """
    A balancer's voter.  C{on_silent(server)} is called when a server that
    renewed here goes silent for a lease, C{on_heard(server)} when a silent
    server renews again.
    """

    def __init__(
        self,
        servers: Collection[str],
        lease: float,
        heartbeat: float,
        now: Callable[[], float],
        probe: Callable[[str], defer.Deferred],
        on_silent: Callable[[str], None] = lambda server: None,
        on_heard: Callable[[str], None] = lambda server: None,
        born: int = 0,
    ):
        """
        C{born}: this witness's start on the scale of incarnation numbers
        (wall-clock nanoseconds).
        """
        #: The servers that may log in and renew (a reload changes it in place).
        self.servers = set(servers)
        self.now = now
        self.voter = Voter(lease, now(), born)
        self.heartbeat = heartbeat
        self.probe = probe
        self.on_silent = on_silent
        self.on_heard = on_heard
        self.silent: Dict[str, bool] = {}

    def renew(self, server: str, incarnation: int, held: bool = True) -> int:
        answer = self.voter.renew(server, incarnation, self.now(), held)
        if self.silent.pop(server, False):
            self.on_heard(server)
        return int(answer)

    def vote(self, server: str, incarnation: int) -> defer.Deferred:
        return vote(self.voter, server, incarnation, self.now, self.probe)

    def check(self) -> None:
        """
        Called every heartbeat: report servers that went silent.
        """
        now = self.now()
        for server in self.voter.heard:
            if not self.silent.get(server) and self.voter.silent(server, now):
                self.silent[server] = True
                log.warn("server {server} renewed no lease for {lease}s: treating it as gone", server=server, lease=self.voter.lease)
                self.on_silent(server)


@implementer(pb.IPerspective)
class WitnessAvatar(pb.Avatar):
    def __init__(self, peer: str, incarnation: int, witness: Witness):
        self.peer = peer
        self.incarnation = incarnation
        self.witness = witness

    def perspective_renew(self, held=True) -> Tuple[int, int, int]:
        return self.witness.renew(self.peer, self.incarnation, held is True), 0, 0

    def perspective_vote(self, server, incarnation) -> defer.Deferred:
        if not isinstance(server, str) or server not in self.witness.servers or not _incarnation(incarnation, 0):
            raise Refused("unknown node or malformed incarnation")
        return self.witness.vote(server, incarnation)


@implementer(portal.IRealm)
class _WitnessRealm:
    def __init__(self, witness: Witness):
        self.witness = witness

    def requestAvatar(self, avatarId, mind, *interfaces):
        if pb.IPerspective not in interfaces:
            raise TypeError("only PB perspectives are served")
        name, incarnation = avatarId
        self.witness.voter.seen(name, incarnation, self.witness.now())
        return pb.IPerspective, WitnessAvatar(name, incarnation, self.witness), lambda: None


def witness_factory(witness: Witness, secret: str) -> pb.PBServerFactory:
    """
    The PB factory a witness listens with; servers log in as they do to
    each other.
    """
    return pb.PBServerFactory(portal.Portal(_WitnessRealm(witness), [SecretChecker(witness.servers, secret)]))
