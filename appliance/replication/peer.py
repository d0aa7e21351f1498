"""
The server side of replication: what a logged-in peer may call.

Peers log in through L{twisted.cred} with their node name and the cluster
secret (PB's challenge-response: the secret never crosses the wire).  An
unauthenticated connection reaches nothing but the login.  Every argument is
validated here before the node sees it; errors a peer should see subclass
L{pb.Error} so no traceback crosses the wire.
"""

from __future__ import annotations

from typing import Collection, List

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


class IReplicationHandler(Interface):
    """
    What the node does with replication traffic; implemented by the session
    server, called only with validated values.
    """

    def received(peer, records):
        """
        Apply records from C{peer}; return a list of L{Result}, one each.
        """

    def hand_over(peer, sid):
        """
        C{peer} takes C{sid} over: return its L{Full} state, or C{None}.
        """

    def digest_received(peer, entries):
        """
        Compare C{peer}'s digest; return the sids that need the full state.
        """

    def load():
        """
        How many sessions this node holds (for placement).
        """

    def sees(peer):
        """
        Whether this node's link to C{peer} is up.
        """


@implementer(pb.IPerspective)
class PeerAvatar(pb.Avatar):
    """
    One logged-in peer.  C{self.peer} is its authenticated node name.
    """

    def __init__(self, peer: str, handler: IReplicationHandler, nodes: Collection[str], limit: int):
        self.peer = peer
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
        return wire.encode_results(self.handler.received(self.peer, records))

    def perspective_hand_over(self, sid) -> List[bytes]:
        if not valid_sid(sid):
            raise Refused("malformed session id")
        full = self.handler.hand_over(self.peer, sid)
        if full is None:
            raise NoSuchSession(sid)
        return wire.split(wire.encode([full]))

    def perspective_digest(self, chunks) -> bytes:
        try:
            entries = wire.decode_digest(wire.join(chunks, self.limit))
        except wire.WireError as e:
            raise Refused(str(e))
        return "".join(self.handler.digest_received(self.peer, entries)).encode("ascii")

    def perspective_ping(self) -> int:
        return self.handler.load()

    def perspective_sees(self, peer) -> bool:
        if not isinstance(peer, str) or peer not in self.nodes:
            raise Refused("unknown node")
        return self.handler.sees(peer)


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
    A peer is any configured node that knows the cluster secret.  A refusal
    is logged by L{appliance.replication.guard}, which knows the client.
    """

    credentialInterfaces = (credentials.IUsernamePassword, credentials.IUsernameHashedPassword)

    def __init__(self, nodes: Collection[str], secret: str):
        self.nodes = nodes
        self.secret = secret.encode("utf-8")

    def requestAvatarId(self, creds):
        name = creds.username.decode("utf-8", "replace") if isinstance(creds.username, bytes) else creds.username
        if name in self.nodes and creds.checkPassword(self.secret):
            return defer.succeed(name)
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
        return pb.IPerspective, PeerAvatar(avatarId, self.handler, self.nodes, self.limit), lambda: None


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
