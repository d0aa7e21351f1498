"""
The persistent-connection client (Deferred API).

A L{Client} logs in to the nodes' client ports with a C{[client:NAME]}
name and password and keeps one PB connection per node it uses.  A
L{RemoteSession} is one session of that client; its calls go to the
session's primary, and every answer carries the summed identity of the
primary and the secondary (L{appliance.core.identity}), from which the
client learns where to go when the primary fails: the secondary (which
promotes itself), else any live node (which takes the session over).
Every call carries an id; a non-idempotent call retried after a failure
is answered from the session's record of it, or fails with
L{OutcomeUnknown} when the record cannot exist: it never runs twice.

The client keeps a view of the nodes' health: a node whose connection
failed or broke is not dialled again for C{down_time} seconds.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, endpoints, error, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from appliance import cookie
from appliance.client.errors import (
    CallRefused,
    CallTimeout,
    LoginRefused,
    NotServed,
    Unavailable,
    localize,
)
from appliance.core import identity

log = Logger()

#: Failures that mean "this node is gone or did not answer": try another.
_GONE = (
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionDone,
    pb.PBConnectionLost,
    pb.DeadReferenceError,
    defer.TimeoutError,
    defer.CancelledError,
)


def parse_address(text: str) -> Tuple[str, int]:
    """
    C{(host, port)} of C{host:port} or C{[v6]:port}.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, not {text!r}")
    return host.strip("[]"), int(port)


def resolve(reactor, name: str, port: int, server: Optional[Tuple[str, int]] = None, timeout: float = 5.0):
    """
    The cluster's hosts by its DNS name (the A records our responder
    gives, which list its live hosts), each with the nodes' client
    C{port}; C{server} is the responder's C{(host, port)} (default: the
    system's resolvers).  Fires with a list of C{(address, port)}.
    """
    from twisted.names import client as names, dns

    resolver = names.Resolver(servers=[server], reactor=reactor) if server else names.createResolver(reactor=reactor)
    d = resolver.lookupAddress(name, timeout=(timeout,))

    def addresses(result):
        answers, _, _ = result
        found = [(r.payload.dottedQuad(), port) for r in answers if r.type == dns.A]
        if not found:
            raise Unavailable(f"{name} has no address")
        return found

    return d.addCallback(addresses)


class _Link:
    """
    The connection to one node, while it lasts.
    """

    def __init__(self, name: str, remote):
        self.name = name
        self.remote = remote


class Client:
    """
    A client of the cluster reached at C{addresses} (C{(host, port)} of
    some nodes' client ports; the rest are learned at login).

    C{timeout} bounds one call on one node; C{failover_time} bounds a
    call's whole life, failovers included; C{down_time} is how long a node
    whose connection failed is left alone.
    """

    def __init__(
        self,
        reactor,
        addresses: Sequence[Tuple[str, int]],
        name: str,
        password: str,
        timeout: float = 10.0,
        failover_time: float = 30.0,
        down_time: float = 5.0,
        connect_timeout: float = 2.0,
        now: Optional[Callable[[], float]] = None,
    ):
        self.reactor = reactor
        self.seeds = list(addresses)
        self.name = name
        self.password = password
        self.timeout = timeout
        self.failover_time = failover_time
        self.down_time = down_time
        self.connect_timeout = connect_timeout
        self.now = now or reactor.seconds
        self.nonce = os.urandom(8).hex()
        self._handles = itertools.count(1)
        self.nodes: Dict[str, Tuple[int, str, int]] = {}
        self.ids: Dict[str, int] = {}
        self.links: Dict[str, _Link] = {}
        self._dialling: Dict[str, List[defer.Deferred]] = {}
        self.down_until: Dict[str, float] = {}
        self.closed = False
        #: Attempts that resent a call (after a failure or a failover).
        self.resent = 0

    # -- connections -------------------------------------------------------

    def _connect(self, host: str, port: int, factory) -> defer.Deferred:
        """
        Connect C{factory} to C{host}:C{port}.
        """
        if ":" in host:
            endpoint = endpoints.TCP6ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        else:
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        return endpoint.connect(factory)

    def _dial(self, host: str, port: int) -> defer.Deferred:
        """
        Connect and log in; fires with the avatar's remote reference.
        """
        factory = pb.PBClientFactory()
        factory.noisy = False
        creds = UsernamePassword(self.name.encode("utf-8"), self.password.encode("utf-8"))
        d = self._connect(host, port, factory)
        d.addCallback(lambda _: factory.login(creds))
        d.addTimeout(self.connect_timeout + self.timeout, self.reactor)

        def refused(failure):
            if failure.check(UnauthorizedLogin) or failure.check("appliance.replication.guard.LoginRefused"):
                raise LoginRefused(f"{host}:{port} refused the login of {self.name!r}")
            return failure

        return d.addErrback(refused)

    @defer.inlineCallbacks
    def connect(self):
        """
        Log in to the first seed address that answers and learn every
        node; fires with this client.  Fails with L{LoginRefused} when the
        name or password is wrong, L{Unavailable} when no seed answers.
        """
        last = None
        for host, port in self.seeds:
            try:
                remote = yield self._dial(host, port)
            except LoginRefused:
                raise
            except _GONE as e:
                last = e
                continue
            hello = yield remote.callRemote("hello").addTimeout(self.timeout, self.reactor)
            self._learn(hello)
            self._keep(hello["node"], remote)
            return self
        raise Unavailable(f"no node answered at {self.seeds}: {last!r}")

    def _learn(self, hello) -> None:
        nodes = {}
        for name, entry in hello["nodes"].items():
            number, host, port = entry
            nodes[name] = (int(number), str(host), int(port))
        self.nodes = nodes
        self.ids = {name: entry[0] for name, entry in nodes.items()}

    def _keep(self, name: str, remote) -> _Link:
        link = self.links[name] = _Link(name, remote)
        self.down_until.pop(name, None)
        remote.notifyOnDisconnect(lambda _, link=link: self._lost(link))
        return link

    def _lost(self, link: _Link) -> None:
        if self.links.get(link.name) is link:
            del self.links[link.name]
            self.mark_down(link.name)

    def mark_down(self, name: str) -> None:
        """
        Do not dial C{name} for C{down_time} seconds.
        """
        if not self.closed:
            self.down_until[name] = self.now() + self.down_time

    def is_down(self, name: str) -> bool:
        until = self.down_until.get(name)
        if until is None:
            return False
        if self.now() >= until:
            del self.down_until[name]
            return False
        return True

    def link(self, name: str) -> defer.Deferred:
        """
        The connection to node C{name}, dialled if there is none (one dial
        at a time per node; whoever asks meanwhile waits for it).
        """
        link = self.links.get(name)
        if link is not None:
            return defer.succeed(link)
        d = defer.Deferred()
        waiters = self._dialling.get(name)
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._dialling[name] = [d]

        def dialled(result):
            del self._dialling[name]
            if isinstance(result, Failure):
                if not result.check(LoginRefused):
                    self.mark_down(name)
            elif self.closed:
                result.broker.transport.loseConnection()
                result = Failure(Unavailable("the client is closed"))
            else:
                result = self._keep(name, result)
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        _, host, port = self.nodes[name]
        self._dial(host, port).addBoth(dialled)
        return d

    def candidates(self, primary: Optional[str], secondary: Optional[str]) -> List[str]:
        """
        Nodes to try for a session, in order: its primary, its secondary,
        then every other node; those known down are left out.
        """
        order = [n for n in (primary, secondary) if n is not None and n in self.nodes]
        order += sorted(n for n in self.nodes if n not in order)
        return [n for n in order if not self.is_down(n)]

    # -- sessions ----------------------------------------------------------

    @defer.inlineCallbacks
    def open(self):
        """
        A new session, on a node this client is connected to if it can;
        fires with its L{RemoteSession}.
        """
        deadline = self.now() + self.failover_time
        while True:
            for name in self.candidates(next(iter(self.links), None), None):
                try:
                    link = yield self.link(name)
                    d = defer.maybeDeferred(link.remote.callRemote, "open")
                    sid, total = yield d.addTimeout(self.timeout, self.reactor).addErrback(localize)
                except _GONE:
                    self.mark_down(name)
                    continue
                except NotServed:
                    continue
                session = RemoteSession(self, sid, name)
                session._learned(name, total)
                return session
            if self.now() >= deadline:
                raise Unavailable("no node could open a session")
            yield task.deferLater(self.reactor, 0.05, lambda: None)

    def attach(self, handle: str) -> "RemoteSession":
        """
        The session of C{handle} (a L{RemoteSession.handle}, which is
        also the value of the session's HTTP cookie, or a bare session
        id), to call again.
        """
        route = cookie.Route(handle, None, None) if cookie.valid_sid(handle) else cookie.decode(handle, self.nodes)
        if route.sid is None:
            raise ValueError("not a session handle")
        session = RemoteSession(self, route.sid, route.primary)
        session.secondary = route.secondary
        return session

    def close(self) -> defer.Deferred:
        """
        Drop every connection; fires once they are closed.
        """
        self.closed = True
        links, self.links = self.links, {}
        waits = []
        for link in links.values():
            broker = link.remote.broker
            if broker.transport is not None:
                d = defer.Deferred()
                broker.notifyOnDisconnect(lambda d=d: d.callback(None))
                broker.transport.loseConnection()
                waits.append(d)
        return defer.gatherResults(waits)


class RemoteSession:
    """
    One session of a L{Client}: C{call(service, method, *args)} and the
    plain C{get}, C{set}, C{delete}, C{keys}.  C{primary} and C{secondary}
    are where the last answer said it lives.
    """

    def __init__(self, client: Client, sid: str, primary: Optional[str]):
        self.client = client
        self.sid = sid
        self.primary = primary
        self.secondary: Optional[str] = None
        # Calls are numbered per handle: two handles of one session never
        # share a call id.
        self.nonce = f"{client.nonce}.{next(client._handles)}"
        self._seq = itertools.count(1)

    @property
    def handle(self) -> str:
        """
        The session's handle: its id and pair, the same text as its HTTP
        cookie value (so a browser-facing path can use the session too).
        """
        return cookie.encode(self.sid, self.primary or "", self.secondary)

    def _learned(self, node: str, total: int) -> None:
        self.primary = node
        known, secondary = identity.secondary_of(self.client.ids, node, total)
        self.secondary = secondary if known else None

    def get(self, key: str, default=None) -> defer.Deferred:
        return self.call("", "get", key, default)

    def set(self, key: str, value) -> defer.Deferred:
        return self.call("", "set", key, value)

    def delete(self, key: str) -> defer.Deferred:
        return self.call("", "delete", key)

    def keys(self) -> defer.Deferred:
        return self.call("", "keys")

    def call(self, service: str, method: str, *args) -> defer.Deferred:
        """
        Run C{service.method(*args)} on the session's primary; fires with
        its JSON result.  Fails with L{UnknownSession}, L{OutcomeUnknown},
        L{ServiceFailed}, L{CallRefused}, or L{Unavailable} once
        C{failover_time} passed without an answer.
        """
        try:
            text = json.dumps(list(args), allow_nan=False)
        except (TypeError, ValueError) as e:
            return defer.fail(CallRefused(f"arguments must be JSON values: {e}"))
        seq = next(self._seq)
        nonce = self.nonce

        def attempt(remote, sent_before):
            return remote.callRemote("call", self.sid, nonce, seq, sent_before, service, method, text)

        return self._failover(f"{service or 'session'}.{method}", attempt).addCallback(json.loads)

    def end(self) -> defer.Deferred:
        """
        End the session on every copy (like a logout); fires with whether
        it existed.
        """
        return self._failover("end", lambda remote, sent_before: remote.callRemote("end", self.sid))

    @defer.inlineCallbacks
    def _failover(self, what: str, attempt):
        """
        C{attempt(remote, sent_before)} on the session's primary, then
        wherever the session may be served, until an answer or
        C{failover_time}; answers are C{[value, sum]}.
        """
        client = self.client
        deadline = client.now() + client.failover_time
        sent = False
        pause = 0.02
        last: Optional[BaseException] = None
        while not client.closed:
            for name in client.candidates(self.primary, self.secondary):
                try:
                    link = yield client.link(name)
                except _GONE as e:
                    last = e
                    continue
                sent_before, sent = sent, True
                client.resent += sent_before
                d = defer.maybeDeferred(attempt, link.remote, sent_before)
                try:
                    value, total = yield d.addTimeout(client.timeout, client.reactor).addErrback(localize)
                except _GONE as e:
                    last = e
                    client.mark_down(name)
                    continue
                except NotServed as e:
                    # Nothing was done there (or what was is recorded):
                    # try the next node; a draining one sends us on.
                    last = e
                    continue
                if total:
                    self._learned(name, total)
                return value
            if client.now() >= deadline:
                if isinstance(last, defer.TimeoutError):
                    raise CallTimeout(f"{what}: no answer within {client.timeout:g}s from any node")
                raise Unavailable(f"{what}: no node served the session within {client.failover_time:g}s ({last!r})")
            yield task.deferLater(client.reactor, pause, lambda: None)
            pause = min(pause * 2, 0.5)
        raise Unavailable("the client is closed")
