"""
The nodes' client port: where programs using L{appliance.client} log in
and call their sessions.

A realm of its own, apart from replication: clients log in with the name
and password of a C{[client:NAME]} section (PB's challenge-response; the
cluster secret is never used here), under the same pre-login guard as the
replication port (L{appliance.replication.guard}).  Every argument is
checked here before the call path sees it; arguments and results are JSON
text (nothing is unpickled, nothing becomes an object), size-bounded.
"""

from __future__ import annotations

import json
from typing import Dict, Mapping, Tuple

from twisted.cred import checkers, credentials, error, portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from appliance.client.errors import CallRefused, NotServed
from appliance.config import ClusterConfig
from appliance.cookie import valid_sid
from appliance.core.calls import CallId
from appliance.core.session import NotJSON
from appliance.core.store import Fenced, TooLarge
from appliance.replication import guard
from appliance.replication.link import PeerUnavailable
from appliance.server.errors import NotServing, TooManySessions, Unprotected
from appliance.server.services import Services, SessionCalls

log = Logger()

#: The largest argument list (JSON text) a call may carry.
MAX_ARGS = 256 * 1024
#: Longest service or method name, and call nonce.
MAX_NAME = 64


def directory(cluster: ClusterConfig) -> Dict[str, list]:
    """
    What a client learns at login: every node with a client port, as
    C{name: [number, host, port]}.
    """
    ids = cluster.node_ids
    return {n.name: [ids[n.name], n.client.host, n.client.port] for n in cluster.nodes if n.client is not None}


@implementer(checkers.ICredentialsChecker)
class ClientChecker:
    """
    A client is a C{[client:NAME]} section's name with its password; its
    avatar id is the name.
    """

    credentialInterfaces = (credentials.IUsernamePassword, credentials.IUsernameHashedPassword)

    def __init__(self, passwords: Mapping[str, str]):
        self.passwords = {name: password.encode("utf-8") for name, password in passwords.items()}

    def requestAvatarId(self, creds):
        name = creds.username.decode("utf-8", "replace") if isinstance(creds.username, bytes) else creds.username
        password = self.passwords.get(name)
        if password is not None and creds.checkPassword(password):
            return defer.succeed(name)
        return defer.fail(error.UnauthorizedLogin())


def _text(value, what: str, limit: int = MAX_NAME, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise CallRefused(f"{what}: expected a string of {0 if empty else 1}-{limit} characters")
    return value


def _sid(value) -> str:
    if not isinstance(value, str) or not valid_sid(value):
        raise CallRefused("not a session handle")
    return value


def _args(value) -> list:
    if not isinstance(value, str) or len(value) > MAX_ARGS:
        raise CallRefused(f"arguments: expected JSON text of at most {MAX_ARGS} bytes")
    try:
        args = json.loads(value)
    except (ValueError, RecursionError):
        raise CallRefused("arguments: not JSON") from None
    if not isinstance(args, list):
        raise CallRefused("arguments: expected a JSON list")
    return args


def _answer_failed(failure):
    """
    Node-side failures as a client sees them: retryable ones become
    L{NotServed} (nothing was done, or what was done is recorded and a
    retry finds the record), the rest pass unless unexpected.
    """
    if failure.check(NotServing, Unprotected, Fenced, TooManySessions, PeerUnavailable):
        raise NotServed(f"{type(failure.value).__name__}: {failure.getErrorMessage()}")
    if failure.check(TooLarge, NotJSON):
        raise CallRefused(failure.getErrorMessage())
    if failure.check(pb.Error):
        return failure
    log.failure("a client call failed", failure)
    raise NotServed("internal error")


class ClientAvatar(pb.Avatar):
    """
    One logged-in client: it reaches only the sessions it created.
    """

    def __init__(self, name: str, node_name: str, calls: SessionCalls, nodes: Dict[str, list]):
        self.name = name
        self.node_name = node_name
        self.calls = calls
        self.nodes = nodes

    def perspective_hello(self) -> dict:
        """
        Which node this is, and every node's number and client address.
        """
        return {"node": self.node_name, "nodes": self.nodes}

    def perspective_open(self):
        """
        A new session: C{[handle, sum]}.
        """
        d = self.calls.open(self.name)
        return d.addCallback(list).addErrback(_answer_failed)

    def perspective_call(self, sid, nonce, seq, retry, service, method, args):
        """
        C{service.method(*args)} on session C{sid}: C{[result JSON, sum]}.
        """
        try:
            call = self._call(sid, nonce, seq, retry, service, method, args)
        except CallRefused:
            return defer.fail()
        d = self.calls.call(self.name, *call)
        return d.addCallback(list).addErrback(_answer_failed)

    def _call(self, sid, nonce, seq, retry, service, method, args) -> Tuple:
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
            raise CallRefused("call sequence: expected a whole number")
        if not isinstance(retry, bool):
            raise CallRefused("retry: expected true or false")
        return (
            _sid(sid),
            CallId(_text(nonce, "call nonce"), seq),
            retry,
            _text(service, "service", empty=True),
            _text(method, "method"),
            _args(args),
        )

    def perspective_end(self, sid):
        """
        End session C{sid} on every copy: C{[whether it existed, 0]}.
        """
        try:
            sid = _sid(sid)
        except CallRefused:
            return defer.fail()
        d = self.calls.end(self.name, sid)
        return d.addCallback(lambda existed: [existed, 0]).addErrback(_answer_failed)


@implementer(portal.IRealm)
class ClientRealm:
    def __init__(self, node_name: str, calls: SessionCalls, nodes: Dict[str, list]):
        self.node_name = node_name
        self.calls = calls
        self.nodes = nodes

    def requestAvatar(self, avatarId, mind, *interfaces):
        if pb.IPerspective not in interfaces:
            raise TypeError("only PB perspectives are served")
        return pb.IPerspective, ClientAvatar(avatarId, self.node_name, self.calls, self.nodes), lambda: None


def server_factory(cluster: ClusterConfig, node_name: str, calls: SessionCalls, clock) -> pb.PBServerFactory:
    """
    The PB factory of a node's client port: clients log in within the
    replication timeout, under the guard's pre-login rules.
    """
    return guard.GuardedServerFactory(
        ClientRealm(node_name, calls, directory(cluster)),
        [ClientChecker({c.name: c.password for c in cluster.clients})],
        clock,
        cluster.cluster.replication_timeout,
    )


def for_node(cluster: ClusterConfig, node_name: str, node, clock) -> pb.PBServerFactory:
    """
    The client port's factory for session server C{node_name}: its
    registered services over its node's request path.
    """
    calls = SessionCalls(node, Services.checked(cluster), cluster.node_ids)
    return server_factory(cluster, node_name, calls, clock)
