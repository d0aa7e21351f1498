"""
The central-store baseline for bench/replication.py: the same demo WSGI
application (C{appliance.demo.cart:app}) hosted by a plain twisted.web
server, with each session kept as one JSON blob per sid in Redis.

This is the design users pick instead of replication: every request loads
the blob at the start and, when the session changed, writes it back at the
end (C{SET ... EX timeout}), from the WSGI worker thread, with redis-py's
blocking client (one pooled connection per worker thread).  There is no
per-session lock: concurrent requests on one session race (last write wins),
which is what most central-store session middlewares do and makes the
baseline a little cheaper than a correct one.

The cookie has the appliance's shape, C{<sid>!<server>!}, so the same wrk
script drives both.

    python3 bench/redis_session_app.py --port 8090 --redis-port 6390 [--container onehop]

Two hosts: C{wsgiresource} (default) is twisted.web's own
L{twisted.web.wsgi.WSGIResource}, which crosses threads several times per
request (C{blockingCallFromThread} for the response head, each body write
and the finish).  C{onehop} hosts the application the way the session
server does (L{appliance.server.hosting.wsgi_environ} and C{run_wsgi}: one
hop to a worker thread and one back), so comparing against it isolates the
session storage design from the WSGI container.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from collections.abc import MutableMapping
from typing import Dict, Iterator, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

COOKIE = "APPSESSION"
SERVER = "redis"
PREFIX = "session:"


class RedisSession(MutableMapping):
    """
    The mapping the demo application expects: a dict with C{invalidate()}.
    """

    def __init__(self, values: Optional[Dict[str, object]] = None):
        self.values: Dict[str, object] = values if values is not None else {}
        self.invalidated = False

    def __getitem__(self, key: str) -> object:
        return self.values[key]

    def __setitem__(self, key: str, value: object) -> None:
        self.values[key] = value

    def __delitem__(self, key: str) -> None:
        del self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def invalidate(self) -> None:
        self.invalidated = True


def _sid_from(environ) -> Optional[str]:
    header = environ.get("HTTP_COOKIE", "")
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            sid = value.strip('"').split("!", 1)[0]
            if len(sid) == 22:
                return sid
            return None
    return None


def _new_sid() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def session_middleware(app, client, timeout: int = 1800):
    """
    Wrap a WSGI C{app} so that it sees C{environ["appliance.session"]}
    loaded from and saved to Redis through C{client}.
    """

    def wrapped(environ, start_response):
        sid = _sid_from(environ)
        blob = client.get(PREFIX + sid) if sid is not None else None
        if blob is None:
            sid = None
            session = RedisSession()
        else:
            session = RedisSession(json.loads(blob))
        environ["appliance.session"] = session
        captured: dict = {}
        body: list = []

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = list(headers)
            return body.append

        result = app(environ, capture)
        try:
            body.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        headers = captured["headers"]
        if session.invalidated:
            if sid is not None:
                client.delete(PREFIX + sid)
            headers.append(("Set-Cookie", f"{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"))
        else:
            data = json.dumps(session.values, separators=(",", ":")).encode("utf-8")
            if data != blob and (session.values or sid is not None):
                if sid is None:
                    sid = _new_sid()
                    headers.append(("Set-Cookie", f"{COOKIE}={sid}!{SERVER}!; Path=/; HttpOnly; SameSite=Lax"))
                client.set(PREFIX + sid, data, ex=timeout)
        start_response(captured["status"], headers)
        return body

    return wrapped


def _one_hop_class():
    from twisted.internet import threads
    from twisted.logger import Logger
    from twisted.web import resource, server

    from appliance.server.hosting import run_wsgi, write_wsgi_response, wsgi_environ

    log = Logger()

    class OneHop(resource.Resource):
        """
        Run a WSGI application in the reactor's thread pool and write its
        buffered response from the reactor thread: the session server's
        hosting, without the session node.
        """

        isLeaf = True

        def __init__(self, reactor, app, mount: str):
            super().__init__()
            self.reactor = reactor
            self.app = app
            self.mount = mount

        def render(self, request):
            environ = wsgi_environ(request, self.mount, None)
            d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), run_wsgi, self.app, environ)
            d.addCallbacks(self._done, self._failed, callbackArgs=(request,), errbackArgs=(request,))
            return server.NOT_DONE_YET

        def _done(self, response, request) -> None:
            write_wsgi_response(response, request)

        def _failed(self, failure, request) -> None:
            log.failure("application failed", failure)
            request.setResponseCode(500)
            request.write(b'{"error": "internal error"}')
            request.finish()

    return OneHop


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--container", choices=("wsgiresource", "onehop"), default="wsgiresource")
    args = parser.parse_args(argv)

    import redis
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web import resource, server, wsgi

    from appliance.demo.cart import app

    OneHop = _one_hop_class()

    # Log like "twistd -n" does for the session servers (access log lines
    # to stdout), so both hosts pay for the same logging.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    client = redis.Redis(host="127.0.0.1", port=args.redis_port, max_connections=64)
    client.ping()

    class Health(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"status": "ok", "sessions": client.dbsize()}).encode("utf-8")

    root = resource.Resource()
    appliance_root = resource.Resource()
    appliance_root.putChild(b"health", Health())
    root.putChild(b"_appliance", appliance_root)
    wrapped = session_middleware(app, client)
    if args.container == "onehop":
        root.putChild(b"cart", OneHop(reactor, wrapped, "/cart"))
    else:
        root.putChild(b"cart", wsgi.WSGIResource(reactor, reactor.getThreadPool(), wrapped))
    site = server.Site(root)
    site.displayTracebacks = False
    reactor.listenTCP(args.port, site, interface=args.host)
    reactor.run()


if __name__ == "__main__":
    main()
