"""
Applications the hosting tests mount: a twisted.web resource that keeps a
counter in its session, one that answers later, and WSGI apps that fail.
"""

from __future__ import annotations

import json

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
