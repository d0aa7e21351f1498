"""
The whole cluster's status (C{/cluster.json}): this listener asks every
other admin listener in the config for its C{/status.json}, with a short
timeout; one that does not answer in time is shown down.
"""

from __future__ import annotations

import io
import json
from typing import Callable, List, Optional

from twisted.internet import defer, protocol
from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from appliance.admin.auth import Guard
from appliance.admin.web import answer_later
from appliance.config import Address, ClusterConfig

#: How long a peer's admin listener has to answer.
TIMEOUT = 1.0
#: The largest answer read from a peer's admin listener (a status is a few KiB).
MAX_ANSWER = 1024 * 1024


class AnswerTooLarge(Exception):
    """
    A peer's admin listener answered more than L{MAX_ANSWER} bytes.
    """


class _Bounded(protocol.Protocol):
    """
    Collects a response body of at most C{limit} bytes into C{finished};
    past it, stops the transfer (the connection is closed) and fails.
    """

    def __init__(self, finished: defer.Deferred, limit: int):
        self.finished = finished
        self.limit = limit
        self.parts: List[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            self.finished.errback(AnswerTooLarge(f"answered more than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def read_body(response, limit: int = MAX_ANSWER) -> defer.Deferred:
    """
    C{twisted.web.client.readBody}, bounded: fails with L{AnswerTooLarge}
    instead of holding whatever a peer sends.
    """
    finished: defer.Deferred = defer.Deferred()
    response.deliverBody(_Bounded(finished, limit))
    return finished


def kind_of(section: str) -> str:
    return {"cluster": "supervisor", "dns": "dns"}.get(section, section.partition(":")[0])


def down(section: str, why: str) -> dict:
    """
    What the cluster view says of a process that did not answer.
    """
    return {"section": section, "kind": kind_of(section), "name": section.partition(":")[2] or section,
            "state": "down", "error": why}


def assemble(cluster: ClusterConfig, asked_by: str, answers: dict) -> dict:
    """
    The cluster view from each section's answer (or L{down}), in config
    order; a node or balancer without an admin address is shown as unknown.
    """
    sections = []
    for n in cluster.nodes:
        sections.append(f"node:{n.name}")
    for b in cluster.balancers:
        sections.append(f"balancer:{b.name}")
    if cluster.dns is not None:
        sections.append("dns")
    if cluster.cluster.admin is not None:
        sections.append("cluster")
    out = []
    for section in sections:
        answer = answers.get(section)
        if answer is None:
            answer = dict(down(section, "no admin address configured"), state="unknown")
        out.append(answer)
    return {"cluster": cluster.cluster.name, "asked_by": asked_by, "sections": out}


class _QuietPool(HTTPConnectionPool):
    """
    A pool whose connections do not log each start and stop (one a second
    per peer while the status page is open).
    """

    class _factory(HTTPConnectionPool._factory):
        noisy = False


class Peers:
    """
    Asks the other admin listeners.  Reads carry C{[cluster] admin_token}
    when there is one (without, reads are open); operations carry the
    credential of L{appliance.admin.auth.Guard}.
    """

    def __init__(self, reactor, cluster: ClusterConfig, timeout: float = TIMEOUT):
        self.reactor = reactor
        self.cluster = cluster
        self.timeout = timeout
        self.pool = _QuietPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 1
        self.pool.cachedConnectionTimeout = 30
        self.agent = Agent(reactor, connectTimeout=timeout, pool=self.pool)
        guard = Guard.of(cluster)
        self.read_headers = {b"authorization": [b"Bearer " + guard.token]} if guard.token else {}
        self.operation_headers = {b"authorization": [b"Bearer " + guard.credential],
                                  b"content-type": [b"application/json"]}

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()

    def call(self, address: Address, method: bytes, path: str, body: Optional[dict] = None,
             timeout: Optional[float] = None) -> defer.Deferred:
        """
        Fires with (HTTP code, JSON document) from the admin listener at
        C{address}; fails when it does not answer within C{timeout} (the
        peers' timeout by default) or answers no JSON object.
        """
        url = f"http://{address}{path}".encode("ascii")
        if body is None:
            d = self.agent.request(method, url, Headers(self.read_headers))
        else:
            payload = FileBodyProducer(io.BytesIO(json.dumps(body).encode("utf-8")))
            d = self.agent.request(method, url, Headers(self.operation_headers), payload)

        def answered(response):
            return read_body(response).addCallback(lambda raw: (response.code, parse(raw)))

        def parse(raw: bytes) -> dict:
            document = json.loads(raw)
            if not isinstance(document, dict):
                raise ValueError("answered no JSON object")
            return document

        d.addCallback(answered)
        d.addTimeout(self.timeout if timeout is None else timeout, self.reactor)
        return d

    def ask(self, section: str, address: Address) -> defer.Deferred:
        """
        Fires with the section's status, or L{down} saying why not.
        """

        def answered(result):
            code, document = result
            if code != 200:
                return down(section, f"HTTP {code}")
            if document.get("section") != section:
                return down(section, "answered for another section")
            return document

        d = self.call(address, b"GET", "/status.json")
        d.addCallback(answered)
        d.addErrback(lambda f: down(section, f.getErrorMessage() or f.type.__name__))
        return d


class ClusterResource(resource.Resource):
    """
    C{/cluster.json}.  Requests that arrive while the peers are being
    asked share that round of answers.
    """

    isLeaf = True

    def __init__(self, root, local: Callable[[], dict], peers: Peers):
        super().__init__()
        self.root = root
        self.local = local
        self.peers = peers
        self._asking = False
        self._waiting: List[defer.Deferred] = []

    def view(self) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting.append(d)
        if not self._asking:
            # Before asking: a round may end at once (every answer local).
            self._asking = True
            self._ask_all()
        return d

    def _answer(self, outcome) -> None:
        self._asking = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(outcome, dict):
                d.callback(outcome)
            else:
                d.errback(outcome)

    def _ask_all(self) -> None:
        root = self.root
        sections, asks = [], []
        for section, address in root.cluster.admins():
            sections.append(section)
            asks.append(defer.maybeDeferred(self.local) if section == root.section else self.peers.ask(section, address))

        round_ = defer.gatherResults(asks)
        round_.addCallback(lambda results: assemble(root.cluster, root.section, dict(zip(sections, results))))
        round_.addBoth(self._answer)

    def render_GET(self, request):
        answer_later(request, self.view())
        return server.NOT_DONE_YET
