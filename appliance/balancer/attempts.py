"""
The server side of one client connection (mixed into
L{appliance.balancer.frontend.FrontendProtocol}): which servers to try for
the current request and in what order, sending it, and what an answer or a
failure means (the next server, the same server on a new connection, or an
error for the client) under the rules of L{may_retry}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure

from .backend import BackendProtocol, ResponseTimeout, ServerGone
from .flow import send_now
from .framing import IDEMPOTENT, RequestHead
from .policy import may_retry
from .response import ResponseHead

if TYPE_CHECKING:  # pragma: no cover
    from .service import Balancer

# The client connection: reading a request head, busy with a request, closed.
HEAD, BUSY, CLOSED = 0, 1, 2
# What the client connection's deadline is for: the time between requests,
# a request head, a request body, a new connection's first request head.
IDLE, HEAD_WAIT, BODY_WAIT, FRESH = 0, 1, 2, 3


class ServerAttempts:
    """
    The attempts of the current request.  The state lives on the client
    connection (L{FrontendProtocol}), which reads requests and calls
    L{_first_attempt} or L{_try_next}; L{BackendProtocol} and
    L{BackendPool} call the public methods back.
    """

    log = Logger()
    balancer: "Balancer"

    def _first_attempt(self, head: RequestHead, session=None) -> None:
        """
        Send a request whose body (if any) is complete: to the cookie's
        server when it is available, found without planning the rest.
        C{session} is L{Balancer.session} of the request, if known.
        """
        b = self.balancer
        now = self._began = self._seconds()
        self._dispatched = True
        node = b.first(b.session(head.cookie) if session is None else session, now)
        if node is None:
            self._plan, self._plan_complete = b.plan(head)
            self._attempt = 0
            self._try_next(now)
            return
        # _try_next for a plan of one, straight through.
        self._plan = (node,)
        self._plan_complete = False
        self._attempt = 1
        self._node = node
        self._sent = False
        conn = b.pool.take(node, now, self.method not in IDEMPOTENT)
        if conn is not None:
            self.server_connected(conn, now)
        else:
            self._connecting = b.pool.connect(node, self)

    def _try_next(self, now: Optional[float] = None) -> None:
        plan = self._plan
        if self._attempt >= len(plan) and not self._plan_complete:
            rest, self._plan_complete = self.balancer.plan(self._head, tried=plan)
            plan = self._plan = plan + rest
        if self._attempt >= len(plan):
            self._fail(502 if self._sent else 503)
            return
        if self._attempt:
            retries = self.balancer.retries
            failed = plan[self._attempt - 1]
            retries[failed] = retries.get(failed, 0) + 1
        node = plan[self._attempt]
        self._sent = False
        if now is None:
            now = self._seconds()
        if not self._attempt:
            self._began = now
        self._attempt += 1
        self._node = node
        pool = self.balancer.pool
        # Like HAProxy's "http-reuse safe": a request that must not be sent
        # twice goes only on a connection that answered moments ago (or a
        # new one), so that it does not meet a server closing an idle one.
        conn = pool.take(node, now, self.method not in IDEMPOTENT)
        if conn is not None:
            self.server_connected(conn, now)
        else:
            self._connecting = pool.connect(node, self)

    def server_connect_failed(self, node: str, reason: Failure) -> None:
        """
        Nothing was sent: passively mark the server down and try the next.
        """
        self._connecting = None
        if self._state != BUSY:
            return
        self.log.info(
            "server {node} unreachable: {error}", node=node, error=reason.getErrorMessage()
        )
        self.balancer.nodes.refused(node, self.balancer.clock.seconds())
        self._try_next()

    def server_connected(self, conn: BackendProtocol, now: Optional[float] = None) -> None:
        self._connecting = None
        if self._state != BUSY:
            self.balancer.pool.release(conn)
            return
        self._conn = conn
        conn.attach(self)
        self.balancer.nodes.started(conn.node)
        if now is None:
            now = self._seconds()
        self._started = now
        conn.deadline = now + self._response_timeout
        body = self._body
        if body:
            send_now(conn.transport, self._head.forward + b"".join(body))
        else:
            send_now(conn.transport, self._head.forward)
        self._sent = True
        if not self._body_done:
            self._streaming = True
            self._body = []
            conn.transport.registerProducer(self.throttle, True)
            self._resume()

    def _response_deadline(self) -> float:
        return self._seconds() + self._response_timeout

    # -- responses (called by BackendProtocol)

    def response_started(self, head: ResponseHead) -> None:
        """
        A response head carrying a session cookie arrived (the backend sets
        C{responding} itself for the others).
        """
        self.responding = True
        b = self.balancer
        if head.session:
            if b.sticky:
                b.sticky_table.learn(head.session, self._node, self._seconds())
            if self._new_session:
                self._new_session = False
                b.new_sessions.charge(self._client_key, self._seconds())

    def response_done(self, conn: BackendProtocol, reusable: bool) -> None:
        b = self.balancer
        now = self._seconds()
        self._conn = None
        self._node = None
        b.nodes.finished(conn.node, now - self._started)
        if b.request_seconds is not None:
            b.request_seconds.observe(now - self._began)
        if self._streaming:
            self._stop_streaming(conn)
        if reusable and self._body_done:
            b.pool.release(conn, now)
        else:
            conn.transport.loseConnection()
        self._head = None
        if self._body:
            self._body = []
        if not self.keep_alive or not self._body_done:
            self._state = CLOSED
            self.transport.loseConnection()
            return
        # The next request, as in _next_request, without asking the time again.
        self._state = HEAD
        if self._paused:
            self._resume()
        self._deadline_kind = IDLE
        self.deadline = now + self._idle_timeout
        if self._buf:
            buf, self._buf = self._buf, b""
            self._read_head(buf)

    def _detach(self, conn: BackendProtocol) -> bool:
        """
        The exchange with C{conn} ended without an answer for the client;
        returns whether the request still waits for one.
        """
        self._conn = None
        self.balancer.nodes.finished(conn.node, None)
        if self._streaming:
            self._stop_streaming(conn)
        return self._state == BUSY

    def backend_failed(self, conn: BackendProtocol, reason: Failure) -> None:
        b = self.balancer
        if not self._detach(conn):
            return
        if self.responding:
            # Part of the answer is already with the client: only closing
            # the connection tells it the response is incomplete.
            self.log.warn(
                "server {node} failed mid-response: {error}",
                node=conn.node,
                error=reason.getErrorMessage(),
            )
            self._state = CLOSED
            self.transport.loseConnection()
            return
        replayable = self._replayable and self._body_done
        if (
            conn.stale()
            and not self._fresh_retry
            and not reason.check(ResponseTimeout, ServerGone)
            and may_retry(self.method, self._sent, replayable)
        ):
            # A pooled connection that failed before any answer was most
            # likely closed by the server while idle: the same server gets
            # the request again, once, on a new connection, rather than the
            # next server (which, in plugin mode, would take the session
            # over).
            self._fresh_retry = True
            b.retries[conn.node] = b.retries.get(conn.node, 0) + 1
            self.log.info(
                "retrying {method} on a new connection to {node}: {error}",
                method=self.method.decode("ascii", "replace"),
                node=conn.node,
                error=reason.getErrorMessage(),
            )
            self._sent = False
            self._connecting = b.pool.connect(conn.node, self)
            return
        if may_retry(self.method, self._sent, replayable):
            self.log.info(
                "retrying {method} after {node} failed: {error}",
                method=self.method.decode("ascii", "replace"),
                node=conn.node,
                error=reason.getErrorMessage(),
            )
            self._try_next()
        else:
            self.log.info(
                "not retrying {method} after {node} failed: {error}",
                method=self.method.decode("ascii", "replace"),
                node=conn.node,
                error=reason.getErrorMessage(),
            )
            self._fail(504 if reason.check(ResponseTimeout) else 502)

    def server_declined(self, conn: BackendProtocol) -> None:
        """
        The server answered that it did nothing with the request (it may
        not serve it now): the request goes to the next server, a POST
        too, when its whole body is still here to send.
        """
        if not self._detach(conn):
            return
        if not (self._replayable and self._body_done):
            self._fail(503)
            return
        self.log.info("{node} did not serve {method}: trying the next server", node=conn.node,
                      method=self.method.decode("ascii", "replace"))
        self._sent = False
        self._try_next()

    def _fail(self, status: int) -> None:
        self.log.warn(
            "answering {status} to {method}: no server could take it",
            status=status,
            method=self.method.decode("ascii", "replace"),
        )
        self._reject(status)

    def _stop_streaming(self, conn: BackendProtocol) -> None:
        """
        The body is through (or the server gone): the server's transport may
        have paused us and will no longer resume us, so resume here.
        """
        self._streaming = False
        conn.transport.unregisterProducer()
        self._paused = False
        self.transport.resumeProducing()
