"""
Applications the hosting tests mount: a twisted.web resource that keeps a
counter in its session, one that answers later, and WSGI apps that fail.
"""

from __future__ import annotations

import json
import os

from twisted.web import resource, server

from appliance.server import session_of


class Counter(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        session = session_of(request)
        session["count"] = session.get("count", 0) + 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"count": session["count"], "path": [p.decode() for p in request.postpath]}).encode()


class Later(resource.Resource):
    isLeaf = True

    def __init__(self, reactor_getter):
        super().__init__()
        self.reactor_getter = reactor_getter

    def render_GET(self, request):
        session = session_of(request)

        def answer():
            session["later"] = True
            request.write(b"late ")
            request.write(b"answer")
            request.finish()

        self.reactor_getter().callLater(0.01, answer)
        return server.NOT_DONE_YET


def _reactor():
    from twisted.internet import reactor

    return reactor


counter = Counter()
later = Later(_reactor)


def broken(environ, start_response):
    environ["appliance.session"]["half"] = "written"
    raise RuntimeError("application bug")


def not_json(environ, start_response):
    environ["appliance.session"]["bad"] = {1, 2}
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class Crash(resource.Resource):
    """
    Dies half-way through its response when it runs on the port named in
    C{?port=}: the server process is gone after sending part of the answer.
    """

    isLeaf = True

    def render(self, request):
        wanted = (request.args.get(b"port") or [b""])[0]
        if wanted == str(request.getHost().port).encode():
            if (request.args.get(b"stage") or [b"head"])[0] == b"head":
                partial = b"HTTP/1.1 200 OK\r\nContent-Le"
            else:
                partial = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial"
            request.transport.write(partial)
            request.transport.doWrite()
            os._exit(1)
        session = session_of(request)
        session["served"] = session.get("served", 0) + 1
        return json.dumps({"served": session["served"], "port": request.getHost().port}).encode()


crash = Crash()


def unavailable(environ, start_response):
    """
    Writes to its session, then answers 503 (a failed request).
    """
    environ["appliance.session"]["half"] = "written"
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"down"]


class Answers(resource.Resource):
    """
    Counts in its session and answers the status given as C{?status=};
    C{?rotate=1} also gives its session a new id.
    """

    isLeaf = True

    def render_GET(self, request):
        session = session_of(request)
        session["count"] = session.get("count", 0) + 1
        if request.args.get(b"rotate"):
            session.rotate()
        request.setResponseCode(int((request.args.get(b"status") or [b"200"])[0]))
        return json.dumps({"count": session["count"]}).encode()


answers = Answers()


def login(environ, start_response):
    """
    Rotates its session's id and records a user (a plain WSGI login).
    """
    session = environ["appliance.session"]
    session.rotate()
    session["user"] = "ann"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"welcome"]
