"""
The whole cluster's status (C{/cluster.json}): this listener asks every
other admin listener in the config for its C{/status.json}, with a short
timeout; one that does not answer in time is shown down.
"""

from __future__ import annotations

import json
from typing import Callable, List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from appliance.admin.web import answer_later
from appliance.config import Address, ClusterConfig

log = Logger()

#: How long a peer's admin listener has to answer.
TIMEOUT = 1.0


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


class Peers:
    """
    Asks the other admin listeners.  C{credential}: the bearer token sent
    to them (C{[cluster] admin_token}; C{None} without one, reads are open).
    """

    def __init__(self, reactor, cluster: ClusterConfig, timeout: float = TIMEOUT):
        self.reactor = reactor
        self.cluster = cluster
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 1
        self.pool.cachedConnectionTimeout = 30
        self.agent = Agent(reactor, connectTimeout=timeout, pool=self.pool)
        token = cluster.cluster.admin_token
        self.headers = Headers({b"authorization": [b"Bearer " + token.encode("utf-8")]} if token else {})

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()

    def ask(self, section: str, address: Address) -> defer.Deferred:
        """
        Fires with the section's status, or L{down} saying why not.
        """
        url = f"http://{address}/status.json".encode("ascii")
        d = self.agent.request(b"GET", url, self.headers)

        def answered(response):
            if response.code != 200:
                return readBody(response).addCallback(lambda _: down(section, f"HTTP {response.code}"))
            return readBody(response).addCallback(parsed)

        def parsed(body: bytes):
            try:
                document = json.loads(body)
            except ValueError:
                return down(section, "answered no JSON")
            if not isinstance(document, dict) or document.get("section") != section:
                return down(section, "answered for another section")
            return document

        d.addCallback(answered)
        d.addTimeout(self.timeout, self.reactor)
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
        self._round: Optional[defer.Deferred] = None
        self._waiting: List[defer.Deferred] = []

    def view(self) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting.append(d)
        if self._round is None:
            self._round = self._ask_all()
        return d

    def _answer(self, outcome) -> None:
        self._round = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(outcome, dict):
                d.callback(outcome)
            else:
                d.errback(outcome)

    def _ask_all(self) -> defer.Deferred:
        root = self.root
        sections, asks = [], []
        for section, address in root.cluster.admins():
            sections.append(section)
            asks.append(defer.maybeDeferred(self.local) if section == root.section else self.peers.ask(section, address))

        round_ = defer.gatherResults(asks)
        round_.addCallback(lambda results: assemble(root.cluster, root.section, dict(zip(sections, results))))
        round_.addBoth(self._answer)
        return round_

    def render_GET(self, request):
        answer_later(request, self.view())
        return server.NOT_DONE_YET
