"""
The server side of replication: what a logged-in peer may call.

Peers log in through L{twisted.cred} as C{NAME/INCARNATION} with the
cluster secret (PB's challenge-response: the secret never crosses the wire).
An unauthenticated connection reaches nothing but the login.  Every argument is
validated here before the node sees it; errors a peer should see subclass
L{pb.Error} so no traceback crosses the wire.
"""

from __future__ import annotations

from typing import Collection, List, Tuple

from twisted.cred import checkers, credentials, error, portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import Interface, implementer

from appliance.cookie import valid_sid
from appliance.core.session import Full
from appliance.replication import guard, wire

log = Logger()


class NoSuchSession(pb.Error):
    """
    This node holds no copy of the session.
    """


class Refused(pb.Error):
    """
    The message was malformed or too large; nothing of it was applied.
    """


class NotNow(pb.Error):
    """
    This node cannot hand the session over now (it does not hold its
    lease, or the session stays busy).
    """


class PrimaryAlive(pb.Error):
    """
    This node holds a backup of the session, and its primary is not known
    dead: take it from the primary.
    """


# What a peer may answer with, turned back into these classes on arrival
# (PB delivers a remote exception as a copy that carries only its name).
REMOTE_ERRORS = (NoSuchSession, Refused, NotNow, PrimaryAlive)


def localize(failure):
    """
    An errback for calls to a peer: one of L{REMOTE_ERRORS} raised there is
    raised here as itself.
    """
    for kind in REMOTE_ERRORS:
        if failure.check(kind) and not isinstance(failure.value, kind):
            raise kind(str(failure.value))
    return failure


def username(name: str, incarnation: int) -> bytes:
    return f"{name}/{incarnation}".encode("ascii")


def parse_username(user, nodes: Collection[str]):
    """
    C{(name, incarnation)} from a login name, or C{None}.
    """
    if isinstance(user, bytes):
        user = user.decode("ascii", "replace")
    name, _, number = user.partition("/")
    if name not in nodes or not (number.isascii() and number.isdigit()) or len(number) > 20:
        return None
    return name, int(number)


class IReplicationHandler(Interface):
    """
    What the node does with replication traffic; implemented by the session
    server, called only with validated values.
    """

    def peer_seen(peer, incarnation):
        """
        C{peer} logged in as C{incarnation}.
        """

    def received(peer, incarnation, records):
        """
        Apply records from C{peer}; return a list of L{Result}, one each.
        """

    def hand_over(peer, incarnation, sid, dead):
        """
        C{peer} takes C{sid} over: fire with its L{Full} state, or C{None}.
        C{dead} is the incarnation of the session's primary the requester
        knows to be dead, or -1.
        """

    def digest_received(peer, incarnation, entries, prefixes):
        """
        Compare C{peer}'s digest (of the sids starting with one of
        C{prefixes}, or of all when C{None}); return the sids that need
        the full state.
        """

    def locate(sids):
        """
        (sid, epoch, version, primary, primary's incarnation) of the copies
        held here of C{sids}.
        """

    def load():
        """
        How many sessions this node holds (for placement).
        """

    def renew(peer, incarnation, held):
        """
        C{peer} renews its lease: (a L{appliance.core.membership.Renewal},
        this node's load, this node's incarnation).
        """

    def vote(server, incarnation):
        """
        Fire with whether this voter holds C{incarnation} of C{server} dead.
        """

    def take(peer, incarnation, records):
        """
        C{peer}, draining or rebalancing, hands over these sessions (L{Full}
        states whose primary it is): fire with a L{wire.Take} for each.
        """

    def counts():
        """
        (primaries, backups) this node holds, for rebalancing; or C{None}
        when it takes part in no rebalance now (it drains, or does not
        hold its lease).
        """

    def drain_requested(peer):
        """
        An authenticated caller asks this node to drain and stop.
        """

    def peer_leaving(peer, incarnation):
        """
        C{peer} is draining: place nothing more on it, re-protect elsewhere
        what it backs; fire once that is done.
        """


@implementer(pb.IPerspective)
class PeerAvatar(pb.Avatar):
    """
    One logged-in peer.  C{self.peer} is its authenticated node name,
    C{self.incarnation} the incarnation it logged in as.
    """

    def __init__(self, peer: str, incarnation: int, handler: IReplicationHandler, nodes: Collection[str], limit: int):
        self.peer = peer
        self.incarnation = incarnation
        self.handler = handler
        self.nodes = nodes
        self.limit = limit

    def _records(self, chunks):
        try:
            records = wire.decode(wire.join(chunks, self.limit), self.nodes)
        except wire.WireError as e:
            log.warn("refused replication from {peer}: {problem}", peer=self.peer, problem=str(e))
            raise Refused(str(e))
        for r in records:
            primary = getattr(r, "primary", self.peer)
            if primary != self.peer:
                log.warn(
                    "refused replication from {peer}: record claims primary {primary}",
                    peer=self.peer,
                    primary=primary,
                )
                raise Refused(f"{self.peer} cannot replicate for {primary}")
        return records

    def perspective_replicate(self, chunks) -> bytes:
        records = self._records(chunks)
        return wire.encode_results(self.handler.received(self.peer, self.incarnation, records))

    def perspective_hand_over(self, sid, dead=-1):
        if not valid_sid(sid) or not _incarnation(dead, -1):
            raise Refused("malformed session id or incarnation")

        def answer(full):
            if full is None:
                raise NoSuchSession(sid)
            return wire.split(wire.encode([full]))

        return defer.maybeDeferred(self.handler.hand_over, self.peer, self.incarnation, sid, dead).addCallback(answer)

    def perspective_digest(self, chunks, prefixes=None) -> List[bytes]:
        """
        One part of a digest (the sids starting with one of C{prefixes}, or
        the whole of it); answered with the sids that differ, in chunks.
        """
        if prefixes is not None and not wire.valid_prefixes(prefixes):
            raise Refused("malformed digest part")
        try:
            entries = wire.decode_digest(wire.join(chunks, self.limit))
        except wire.WireError as e:
            raise Refused(str(e))
        if prefixes is not None and any(sid[0] not in prefixes for sid, _, _ in entries):
            raise Refused("a digest entry outside its part")
        differ = self.handler.digest_received(self.peer, self.incarnation, entries, prefixes)
        return wire.split(wire.encode_sids(differ))

    def perspective_take(self, chunks) -> defer.Deferred:
        records = self._records(chunks)
        if not all(isinstance(r, Full) for r in records):
            raise Refused("a hand-over carries full states")
        d = defer.maybeDeferred(self.handler.take, self.peer, self.incarnation, records)
        return d.addCallback(wire.encode_takes)

    def perspective_drain(self) -> None:
        """
        The operator's request to drain this node and stop (any caller that
        logged in with the cluster secret).
        """
        log.info("{peer} asked this node to drain", peer=self.peer)
        self.handler.drain_requested(self.peer)

    def perspective_counts(self):
        """
        (primaries, backups) held here, or C{None}: see
        L{IReplicationHandler.counts}.
        """
        return self.handler.counts()

    def perspective_leaving(self) -> defer.Deferred:
        return defer.maybeDeferred(self.handler.peer_leaving, self.peer, self.incarnation)

    def perspective_locate(self, chunks) -> List[bytes]:
        try:
            sids = decode_sids(wire.join(chunks, self.limit))
        except wire.WireError as e:
            raise Refused(str(e))
        return wire.split(wire.encode_copies(self.handler.locate(sids)))

    def perspective_renew(self, held=True) -> Tuple[int, int, int]:
        """
        The lease renewal that is also the heartbeat (C{held}: whether the
        peer's incarnation held its lease before): (answer, this node's
        load, this node's incarnation).
        """
        return self.handler.renew(self.peer, self.incarnation, held is True)

    def perspective_vote(self, server, incarnation) -> defer.Deferred:
        if not isinstance(server, str) or server not in self.nodes or not _incarnation(incarnation, 0):
            raise Refused("unknown node or malformed incarnation")
        return defer.maybeDeferred(self.handler.vote, server, incarnation)


def _incarnation(value, lowest: int) -> bool:
    return type(value) is int and lowest <= value < 2**64

def decode_hand_over(chunks, nodes: Collection[str], limit: int) -> Full:
    """
    The requester's side of L{PeerAvatar.perspective_hand_over}.
    """
    records = wire.decode(wire.join(chunks, limit), nodes)
    if len(records) != 1 or not isinstance(records[0], Full):
        raise wire.WireError("a hand-over carries one full state")
    return records[0]


def decode_sids(data: object) -> List[str]:
    if not isinstance(data, bytes) or len(data) % 22:
        raise wire.WireError("malformed sid list")
    sids = [data[i : i + 22].decode("ascii", "replace") for i in range(0, len(data), 22)]
    if not all(valid_sid(s) for s in sids):
        raise wire.WireError("malformed sid list")
    return sids


@implementer(checkers.ICredentialsChecker)
class SecretChecker:
    """
    A peer is any configured node that knows the cluster secret; its
    avatar id is C{(name, incarnation)}.  A refusal is logged by
    L{appliance.replication.guard}, which knows the client.
    """

    credentialInterfaces = (credentials.IUsernamePassword, credentials.IUsernameHashedPassword)

    def __init__(self, nodes: Collection[str], secret: str):
        self.nodes = nodes
        self.secret = secret.encode("utf-8")

    def requestAvatarId(self, creds):
        who = parse_username(creds.username, self.nodes)
        if who is not None and creds.checkPassword(self.secret):
            return defer.succeed(who)
        return defer.fail(error.UnauthorizedLogin())


@implementer(portal.IRealm)
class PeerRealm:
    def __init__(self, handler: IReplicationHandler, nodes: Collection[str], limit: int):
        self.handler = handler
        self.nodes = nodes
        self.limit = limit

    def requestAvatar(self, avatarId, mind, *interfaces):
        if pb.IPerspective not in interfaces:
            raise TypeError("only PB perspectives are served")
        name, incarnation = avatarId
        self.handler.peer_seen(name, incarnation)
        return pb.IPerspective, PeerAvatar(name, incarnation, self.handler, self.nodes, self.limit), lambda: None


def server_factory(
    handler: IReplicationHandler, nodes: Collection[str], secret: str, limit: int, clock, login_timeout: float
) -> pb.PBServerFactory:
    """
    The PB factory a node listens with: peers log in with the secret within
    C{login_timeout} seconds on C{clock}, under L{guard}'s pre-login rules.
    """
    return guard.GuardedServerFactory(
        PeerRealm(handler, nodes, limit), [SecretChecker(nodes, secret)], clock, login_timeout
    )
