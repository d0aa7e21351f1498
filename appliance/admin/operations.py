"""
What an operator asks of one node through any admin listener: its
sessions, one session's metadata, ending a session, and a drain.  A
request names the node (C{node=NAME} in the query, or C{"node"} in the JSON
body; a node's own listener may leave it out); a listener that does not
serve that node passes the request to the node's admin listener, so the
status page and the command line need only one address.
"""

from __future__ import annotations

import json
from typing import Callable, Optional
from urllib.parse import urlencode

from twisted.internet import defer, error
from twisted.web import resource, server
from twisted.web.client import ResponseNeverReceived

from appliance import cookie
from appliance.admin.sessions import Largest, end_session, metadata, sessions_document
from appliance.admin.web import answer_later, json_body
from appliance.server.errors import NotServing
from appliance.server.service import SessionServerService

#: The largest JSON body an operation takes.
MAX_BODY = 64 * 1024


class Problem(Exception):
    """
    A request that cannot be done: C{code} and the one-line reason.
    """

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


def _arguments(request) -> dict:
    if request.method in (b"GET", b"HEAD"):
        return {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v}
    raw = request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise Problem(413, "body too large")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise Problem(400, "the body is not JSON") from None
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        raise Problem(400, "the body is a JSON object of strings")
    return body


class NodeOperation(resource.Resource):
    """
    One operation on a node: C{local(server, arguments)} returns (or fires
    with) (HTTP code, document) where this listener serves the node;
    elsewhere the request goes to the node's admin listener, which has
    C{timeout} seconds to answer.
    """

    isLeaf = True

    def __init__(self, root, path: str, local: Callable, method: bytes = b"GET", timeout: Optional[float] = None):
        super().__init__()
        self.root = root
        self.path = path
        self.local = local
        self.method = method
        self.timeout = timeout

    def _server(self) -> Optional[SessionServerService]:
        for service in self.root.services:
            if isinstance(service, SessionServerService):
                return service
        return None

    def _run(self, request) -> defer.Deferred:
        args = _arguments(request)
        here = self._server()
        node = args.get("node") or (here.name if here is not None else None)
        if node is None:
            raise Problem(400, "name the node (node=NAME)")
        if here is not None and here.name == node:
            return defer.maybeDeferred(self.local, here, args)
        config = self.root.cluster.node(node)
        if config is None:
            raise Problem(404, f"no node {node!r} in the configuration")
        if config.admin is None:
            raise Problem(502, f"node {node} has no admin address")
        forwarded = dict(args, node=node)
        if request.method in (b"GET", b"HEAD"):
            query = urlencode(sorted(forwarded.items()))
            return self.root.peers.call(config.admin, b"GET", f"{self.path}?{query}", timeout=self.timeout)
        return self.root.peers.call(config.admin, request.method, self.path, forwarded, timeout=self.timeout)

    def render(self, request):
        if request.method != self.method and not (self.method == b"GET" and request.method == b"HEAD"):
            request.setHeader(b"allow", self.method)
            return json_body(request, {"error": f"use {self.method.decode()}"}, 405)
        try:
            d = self._run(request)
        except Problem as e:
            return json_body(request, {"error": str(e)}, e.code)

        def coded(result):
            code, document = result
            request.setResponseCode(code)
            return document

        def failed(failure):
            if failure.check(Problem):
                request.setResponseCode(failure.value.code)
                return {"error": str(failure.value)}
            if failure.check(NotServing):
                request.setResponseCode(503)
                return {"error": f"not served now: {failure.value}"}
            if failure.check(defer.TimeoutError, error.ConnectError, ResponseNeverReceived, ValueError):
                request.setResponseCode(504)
                return {"error": f"the node's admin listener did not answer: {failure.getErrorMessage()}"}
            return failure

        d.addCallbacks(coded, failed)
        answer_later(request, d)
        return server.NOT_DONE_YET


def _sid(args: dict) -> str:
    sid = args.get("sid", "")
    if not cookie.valid_sid(sid):
        raise Problem(400, "sid: expected a session id (22 URL-safe characters)")
    return sid


def sessions_of(largest_of: Callable[[SessionServerService], Largest]):
    def local(server: SessionServerService, args: dict):
        return 200, sessions_document(server, largest_of(server))

    return local


def session_of(server: SessionServerService, args: dict):
    found = metadata(server, _sid(args))
    if found is None:
        return 404, {"error": f"{server.name} holds no such session"}
    return 200, found


def end_of(server: SessionServerService, args: dict):
    sid = _sid(args)
    d = end_session(server, sid)
    d.addCallback(lambda ended: (200, {"ended": sid, "node": server.name}) if ended
                  else (404, {"error": f"no such session in the cluster: {sid}"}))
    return d


def drain_of(server: SessionServerService, args: dict):
    def reported(report):
        return 200, {
            "node": server.name,
            "handed_over": report.handed,
            "stale_dropped": report.stale,
            "left": len(report.left),
            "in_flight": report.in_flight,
            "queued": report.queued,
            "timed_out": report.timed_out,
        }

    return server.drain().addCallback(reported)


def mount(root) -> None:
    """
    The operations on nodes, on C{root}.
    """
    kept = {}

    def largest_of(server: SessionServerService) -> Largest:
        if server.name not in kept:
            kept[server.name] = Largest(root.reactor, server.node.store, server.now)
        return kept[server.name]

    drain_wait = root.cluster.cluster.drain_timeout + 5.0
    root.putChild(b"sessions.json", NodeOperation(root, "/sessions.json", sessions_of(largest_of)))
    root.putChild(b"session.json", NodeOperation(root, "/session.json", session_of))
    end_wait = root.cluster.cluster.lock_wait + 2.0
    root.putChild(b"end-session", NodeOperation(root, "/end-session", end_of, b"POST", end_wait))
    root.putChild(b"drain", NodeOperation(root, "/drain", drain_of, b"POST", drain_wait))
