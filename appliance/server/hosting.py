"""
The session server's HTTP edge: find the session from the cookie, run the
application with it, hold the response until the change is committed and
(in sync mode) replicated, then send it with the cookie.

WSGI applications run in the reactor's thread pool and see their session as
C{environ["appliance.session"]}, the configuration as
C{environ["appliance.cluster"]} and the serving node's name as
C{environ["appliance.node"]}; twisted.web resources render in the reactor
thread and reach the same mapping with L{session_of}.
"""

from __future__ import annotations

import importlib
import json
import sys
from io import BytesIO
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers

from appliance import cookie
from appliance.balancer.flow import send_now
from appliance.balancer.framing import server_limits
from appliance.config import AppConfig, ClusterConfig, ConfigError
from appliance.core.session import NotJSON, SessionData
from appliance.core.store import Fenced, TooLarge
from appliance.server.errors import NotServing, Unprotected
from appliance.server.node import Handle, SessionNode, TooManySessions

log = Logger()

#: Seconds a client refused a new session (the node is full) is told to wait.
FULL_RETRY_AFTER = b"10"

HEALTH = b"/_appliance/health"


def session_of(request) -> SessionData:
    """
    The session of a request to a hosted twisted.web resource: a mutable
    mapping of JSON-compatible values, committed when the response finishes.
    """
    return request.appliance_session


def load_object(path: str):
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def check_apps(cluster: ClusterConfig) -> None:
    """
    Import every application of C{cluster}; one that cannot be imported
    (a missing module or attribute, or a module that fails as it loads)
    raises L{ConfigError} naming its section and key, like any other
    configuration mistake.
    """
    for app in cluster.apps:
        key = "wsgi" if app.wsgi is not None else "resource"
        path = app.wsgi or app.resource
        try:
            load_object(path)
        except Exception as e:
            problem = " ".join(str(e).split()) or "(no message)"
            raise ConfigError(cluster.path, f"app:{app.name}", key, f"cannot import {path}: {type(e).__name__}: {problem}") from None


class HeldRequest(server.Request):
    """
    A request whose response body is held, once L{hold} is called, until
    the session is committed: only then are the status, cookie and body
    known to be final.
    """

    appliance_session: Optional[SessionData] = None
    _held: Optional[List[bytes]] = None
    _on_finish = None
    _on_abandon = None

    def hold(self, on_finish, on_abandon) -> None:
        """
        Hold the response until C{on_finish(request)} (the commit) is done;
        C{on_abandon()} runs instead when the client leaves first.
        """
        self._held = []
        self._on_finish = on_finish
        self._on_abandon = on_abandon

    def connectionLost(self, reason) -> None:
        # What notifyFinish's errback would say, without a Deferred for
        # every request: the client left before the response was finished.
        server.Request.connectionLost(self, reason)
        on_abandon, self._on_abandon = self._on_abandon, None
        if on_abandon is not None and self._on_finish is not None:
            self._on_finish = None
            on_abandon()

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            server.Request.write(self, data)

    def finish(self):
        on_finish, self._on_finish = self._on_finish, None
        if on_finish is None:
            if not self._disconnected and not self.finished:
                return server.Request.finish(self)
            return None
        d = defer.maybeDeferred(on_finish, self)
        d.addErrback(self._commit_failed)
        d.addCallback(lambda _: self._release())
        return None

    def _commit_failed(self, failure: Failure) -> None:
        if failure.check(NotServing):
            self.not_served(str(failure.value))
        elif failure.check(Unprotected):
            self._replace(503, {"error": "no second copy of this change could be made; retry"})
            self.setHeader(b"retry-after", b"1")
        elif failure.check(Fenced):
            self._replace(503, {"error": "this session moved to another server; retry"})
            self.setHeader(b"retry-after", b"1")
        elif failure.check(TooManySessions):
            self._replace(503, {"error": "this server holds all the sessions it may; retry later"})
            self.setHeader(b"retry-after", FULL_RETRY_AFTER)
        elif failure.check(TooLarge):
            self._replace(413, {"error": str(failure.value)})
        elif failure.check(NotJSON):
            log.error("application stored a non-JSON value: {problem}", problem=str(failure.value))
            self._replace(500, {"error": "the application stored a value a session cannot hold"})
        else:
            log.failure("committing a session failed", failure)
            self._replace(500, {"error": "internal error"})

    def not_served(self, why: str) -> None:
        """
        503 that says nothing was done here (the balancer may send the
        request to another server).
        """
        self._replace(503, {"error": "this server cannot serve the session now; retry", "why": why})
        self.setHeader(b"retry-after", b"1")
        self.setHeader(b"appliance-not-served", b"1")

    def _replace(self, code: int, body: dict) -> None:
        self.setResponseCode(code)
        self.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        self.responseHeaders.removeHeader(b"content-length")
        self._held = [json.dumps(body).encode("utf-8")]

    def _release(self) -> None:
        held, self._held = self._held or [], None
        if self._disconnected or self.finished:
            return
        body = b"".join(held)
        if self.method != b"HEAD" and not self.responseHeaders.hasHeader(b"content-length"):
            self.setHeader(b"content-length", b"%d" % len(body))
        channel = self.channel
        gather = isinstance(channel, NodeChannel)
        if gather:
            channel.gather()
        try:
            if body:
                server.Request.write(self, body)
            server.Request.finish(self)
        finally:
            # Finishing sent it already (requestDone), unless it failed.
            if gather:
                channel.send_gathered()


def _body_length(content) -> int:
    """
    How many body bytes were received: twisted.web has already removed any
    chunked framing, so this is the length a WSGI application may read.
    """
    if content is None:
        return 0
    content.seek(0, 2)
    length = content.tell()
    content.seek(0)
    return length


def wsgi_environ(request: server.Request, mount: str, session: SessionData) -> dict:
    """
    The WSGI environ of C{request}.  The body is handed over whole however
    it was framed: C{CONTENT_LENGTH} is what was received (a chunked body
    is decoded before the application runs), and the hop-by-hop
    C{Transfer-Encoding} it came with is not passed on.  No
    C{wsgi.input_terminated}: with the length always known, an application
    reads C{read(size)} as PEP 3333 says (Werkzeug would otherwise call
    C{read()}, which C{wsgiref.validate} refuses).
    """
    path = request.path.decode("latin-1")
    headers = request.requestHeaders
    framed = headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")
    environ = {
        "REQUEST_METHOD": request.method.decode("ascii", "replace"),
        "SCRIPT_NAME": "" if mount == "/" else mount,
        "PATH_INFO": path if mount == "/" else path[len(mount) :],
        "QUERY_STRING": request.uri.partition(b"?")[2].decode("latin-1"),
        "CONTENT_TYPE": (request.getHeader(b"content-type") or b"").decode("latin-1"),
        "CONTENT_LENGTH": str(_body_length(request.content)) if framed else "",
        "SERVER_NAME": _server_name(request),
        "SERVER_PORT": str(request.getHost().port),
        "REMOTE_ADDR": getattr(request.getClientAddress(), "host", ""),
        "SERVER_PROTOCOL": request.clientproto.decode("latin-1"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if request.isSecure() else "http",
        "wsgi.input": request.content if request.content is not None else BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "appliance.session": session,
    }
    for name, values in headers.getAllRawHeaders():
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if key not in _NOT_PASSED:
            environ[key] = ",".join(v.decode("latin-1") for v in values)
    return environ


_NOT_PASSED = frozenset(("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING"))
#: SERVER_NAME by Host header, as twisted.web reads it (a regex match per
#: request otherwise); a few dozen kept, whatever clients send.
_SERVER_NAMES: Dict[bytes, str] = {}


def _server_name(request: server.Request) -> str:
    host = request.getHeader(b"host")
    name = None if host is None else _SERVER_NAMES.get(host)
    if name is None:
        name = request.getRequestHostname().decode("latin-1")
        if host is not None and len(_SERVER_NAMES) < 64:
            _SERVER_NAMES[host] = name
    return name


def run_wsgi(app, environ) -> Tuple[str, list, List[bytes]]:
    """
    Run a WSGI application to completion (in a worker thread) and return
    its status, headers and body.
    """
    response: dict = {}

    def start_response(status, headers, exc_info=None):
        if exc_info is not None and response.get("sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        response["status"] = status
        response["headers"] = headers
        return body.append

    body: List[bytes] = []
    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                response["sent"] = True
                body.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if "status" not in response:
        raise RuntimeError("the WSGI application never called start_response")
    return response["status"], response["headers"], body


def write_wsgi_response(response: Tuple[str, list, List[bytes]], request: server.Request) -> None:
    """
    Write what L{run_wsgi} returned to C{request} and finish it.
    """
    status, headers, body = response
    code, _, message = status.partition(" ")
    request.setResponseCode(int(code), message.encode("latin-1"))
    for name, value in headers:
        request.responseHeaders.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    for chunk in body:
        request.write(chunk)
    request.finish()


def plain_error(request: server.Request, code: int, phrase: bytes, allow: Optional[bytes] = None) -> bytes:
    """
    A short text answer for what the server itself refuses (no application
    handles the path, or the method does not apply); returns the body.
    """
    request.setResponseCode(code, phrase)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if allow is not None:
        request.setHeader(b"allow", allow)
    return b"%d %s\n" % (code, phrase)


class NodeResource(resource.Resource):
    """
    The root of a session server: the health endpoint and every mounted
    application.
    """

    isLeaf = True

    def __init__(self, reactor, cluster: ClusterConfig, node: SessionNode, health, secure: bool = False):
        super().__init__()
        self.reactor = reactor
        self.node = node
        self.cluster = cluster
        self.cookie_name = cluster.cluster.cookie.encode("ascii")
        self.names = frozenset(cluster.node_names)
        self.health = health
        self.secure = secure
        self.apps = sorted(
            ((app.mount, app, load_object(app.wsgi or app.resource)) for app in cluster.apps),
            key=lambda entry: -len(entry[0]),
        )

    def render(self, request):
        path = request.path
        if path == HEALTH:
            if request.method not in (b"GET", b"HEAD"):
                return plain_error(request, 405, b"Method Not Allowed", allow=b"GET, HEAD")
            state = self.health()
            if state.get("status") == "draining":
                # Out of the balancers' rotation: no new session comes here.
                request.setResponseCode(503)
            body = json.dumps(state).encode("utf-8")
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return body
        text = path.decode("latin-1")
        for mount, app, target in self.apps:
            if text == mount or text.startswith(mount + "/"):
                self._serve(request, app, target)
                return server.NOT_DONE_YET
        return plain_error(request, 404, b"Not Found")

    def _serve(self, request: HeldRequest, app: AppConfig, target) -> None:
        # The balancer's rule (cookie.session_cookie), not getCookie's "last
        # one wins", so both read the same cookie when a request has two.
        lines = request.requestHeaders.getRawHeaders(b"cookie")
        _, route = cookie.session_cookie(b"; ".join(lines) if lines else None, self.cookie_name, self.names)
        d = self.node.open(route)
        d.addCallback(self._run, request, app, target, route)
        d.addErrback(self._failed, request)

    def _run(self, handle: Handle, request: HeldRequest, app: AppConfig, target, route) -> None:
        request.appliance_session = handle.data
        request.hold(lambda req: self._commit(req, handle, route, app), lambda: self.node.abandon(handle))
        if app.wsgi is not None:
            environ = wsgi_environ(request, app.mount, handle.data)
            environ["appliance.cluster"] = self.cluster
            environ["appliance.node"] = self.node.name
            if app.threads:
                d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), run_wsgi, target, environ)
                d.addCallback(write_wsgi_response, request)
                d.addErrback(self._app_failed, request, handle)
                return
            try:
                write_wsgi_response(run_wsgi(target, environ), request)
            except Exception:
                self._app_failed(Failure(), request, handle)
        else:
            request.prepath = app.mount.encode("latin-1").split(b"/")[1:]
            request.postpath = request.postpath[len(request.prepath) :]
            try:
                body = resource.getChildForRequest(target, request).render(request)
            except Exception:
                self._app_failed(Failure(), request, handle)
                return
            if body is not server.NOT_DONE_YET:
                request.write(body)
                request.finish()

    def _app_failed(self, failure: Failure, request: HeldRequest, handle: Handle) -> None:
        log.failure("application failed", failure)
        request._replace(500, {"error": "internal error"})
        request.finish()

    def _commit(self, request: HeldRequest, handle: Handle, route: cookie.Route, app: AppConfig):
        if request.code >= 500 and not app.commit_failed:
            # A failed request leaves the session as it was (as Django does).
            handle.data.discard()
        d = self.node.close(handle)
        d.addCallback(self._set_cookie, request, route)
        return d

    def _set_cookie(self, outcome, request: HeldRequest, route: cookie.Route) -> None:
        name = self.cookie_name.decode("ascii")
        secure = self.secure or request.isSecure() or request.appliance_session.secure_cookie
        if outcome.ended:
            request.setHeader(b"set-cookie", cookie.set_cookie(name, "", secure, max_age=0).encode("ascii"))
        elif outcome.cookie is not None and outcome.cookie != cookie.encode(
            route.sid or "", route.primary or "", route.secondary
        ):
            request.setHeader(b"set-cookie", cookie.set_cookie(name, outcome.cookie, secure).encode("ascii"))

    def _failed(self, failure: Failure, request: HeldRequest) -> None:
        if request.finished or request._disconnected:
            return
        if failure.check(NotServing):
            request.not_served(str(failure.value))
            request._release()
            return
        log.failure("could not open a session", failure)
        request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"retry-after", b"1")
        server.Request.write(request, b'{"error": "session unavailable; retry"}')
        server.Request.finish(request)


class NodeChannel(http.HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel, with two costs of every request taken
    out: the connection's addresses are read once (twisted.web asks for
    them in every request, and C{getHost} is a C{getsockname} call each
    time), and a held response, whose head and body are whole when it is
    released, leaves in one C{send} as it is finished (L{send_now}) rather
    than queued for the next reactor turn (two C{epoll_ctl} calls and a
    dispatch per response).
    """

    _host = None
    _peer = None
    #: What a response being released writes, gathered to leave at once.
    _gathered: Optional[List[bytes]] = None

    def getHost(self):
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def getPeer(self):
        if self._peer is None:
            self._peer = self.transport.getPeer()
        return self._peer

    def gather(self) -> None:
        """
        Keep what is written from now on until L{send_gathered} (which
        finishing the request calls, before the connection may close).
        """
        self._gathered = []

    def send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered:
            send_now(self.transport, b"".join(gathered))

    def writeHeaders(self, version, code, reason, headers):
        if self._gathered is None or not isinstance(headers, Headers):
            return http.HTTPChannel.writeHeaders(self, version, code, reason, headers)
        gathered = self._gathered
        gathered.extend((version, b" ", code, b" ", reason, b"\r\n"))
        for name, values in headers.getAllRawHeaders():
            for value in values:
                gathered.extend((name, b": ", value, b"\r\n"))
        gathered.append(b"\r\n")

    def write(self, data):
        if self._gathered is None:
            self.transport.write(data)
        else:
            self._gathered.append(data)

    def writeSequence(self, iovec):
        if self._gathered is None:
            self.transport.writeSequence(iovec)
        else:
            self._gathered.extend(iovec)

    def requestDone(self, request):
        # Sent before the next pipelined request is read, and before a
        # connection that does not persist is closed.
        self.send_gathered()
        http.HTTPChannel.requestDone(self, request)


class NodeSite(server.Site):
    """
    The session server's site.  Access logging is optional (one line per
    request costs a few percent of the reactor thread), and form bodies are
    parsed into C{request.args} only when a twisted.web resource is mounted:
    WSGI applications read the body themselves.
    """

    requestFactory = HeldRequest
    displayTracebacks = False
    access_log = False
    # Plain HTTP/1.1 channels (nothing to negotiate on a plain TCP port),
    # whose head limits are set from the balancers' (see site()).
    protocol = NodeChannel
    head_bytes = http.HTTPChannel.totalHeadersSize
    head_lines = http.HTTPChannel.maxHeaders

    def buildProtocol(self, addr):
        channel = server.Site.buildProtocol(self, addr)
        channel.totalHeadersSize = channel.MAX_LENGTH = self.head_bytes
        channel.maxHeaders = self.head_lines
        return channel

    def log(self, request) -> None:
        if self.access_log:
            server.Site.log(self, request)


def site(reactor, cluster: ClusterConfig, node: SessionNode, health) -> server.Site:
    s = NodeSite(
        NodeResource(reactor, cluster, node, health),
        parsePOSTFormSubmission=any(app.resource is not None for app in cluster.apps),
        reactor=reactor,
    )
    s.access_log = cluster.cluster.access_log
    # A head that a balancer accepts, with what it adds, is never refused here.
    s.head_bytes, s.head_lines = server_limits(
        [b.max_header_bytes for b in cluster.balancers], [b.max_headers for b in cluster.balancers]
    )
    return s
