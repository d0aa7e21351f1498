"""
One request and its answer, from the end of the request head to the end of
the response (or the error the balancer answers instead): the request's
body, which servers to try and in what order, sending it, and what an answer
or a failure means (the next server, the same server on a new connection,
or an error for the client) under the rules of L{may_retry}.

Every state of an exchange lives here, in L{Exchange.state}:

    BODY ------> CONNECTING <-----+        (the first server, a retry)
      |              |            |
      |              v            |
      +---------> SENT -----------+        (declined, failed before an answer)
                     |
                     v
                 RESPONDING ---> DONE
    any state ---> FAILED                  (an error answered, the client gone)

C{BODY}: a request body is being read and nothing is sent yet (a body
small enough to be held for a retry is held until complete).  A body too
large to hold is streamed to the first server once it is connected
(C{streaming}, in C{SENT} or C{RESPONDING}); such a request is never sent
twice.

The client connection (L{FrontendProtocol}) creates one exchange per
forwarded request and gives it the body's bytes (L{feed_body}).  It offers
the exchange these methods, and nothing else is read from it but
C{transport}, C{balancer}, C{secure}, C{throttle} and its per-connection
settings: C{reject(status)} (answer an error and close), C{finished(now,
keep_alive)} (the answer is through: the next request, or close),
C{close()}, C{pause()}, C{resume()}.

The server side (L{BackendProtocol}, L{BackendPool}) talks to the exchange
through these methods only: C{server_connected}, C{server_connect_failed},
C{response_started}, C{response_done}, C{backend_failed},
C{server_declined}; and reads C{method}, C{keep_alive} (which it clears
for an answer framed by the end of its connection), C{cookie_name},
C{secure}, C{transport} (the client's) and C{balancer}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

from twisted.logger import Logger
from twisted.python.failure import Failure

from .backend import BackendProtocol, ResponseTimeout, ServerGone
from .chunked import ChunkedScanner
from .flow import send_now
from .framing import IDEMPOTENT, LENGTH, RequestHead
from .policy import may_retry
from .response import ResponseHead

if TYPE_CHECKING:  # pragma: no cover
    from .frontend import FrontendProtocol

BODY, CONNECTING, SENT, RESPONDING, DONE, FAILED = range(6)
STATE_NAMES = ("BODY", "CONNECTING", "SENT", "RESPONDING", "DONE", "FAILED")


class Exchange:
    """
    One forwarded request of a client connection, in one of the states
    above.  C{new_session}: the request carried no session and counts
    against its client's new-session limit if its answer sets one.
    """

    log = Logger()

    # What a new exchange starts with, kept on the class: a request sets
    # only what differs (most do not plan, retry, hold or stream a body).
    plan: Tuple[str, ...] = ()
    plan_complete = True
    attempt = 0
    node: Optional[str] = None
    conn: Optional[BackendProtocol] = None
    connecting = None
    sent = False
    fresh_retry = False
    replayable = True
    body: Sequence[bytes] = ()
    body_size = 0
    body_left = 0
    body_done = True
    scanner: Optional[ChunkedScanner] = None
    streaming = False
    started = 0.0
    began = 0.0

    def __init__(
        self,
        fe: "FrontendProtocol",
        head: RequestHead,
        cookie_name: Optional[bytes],
        new_session: bool,
    ):
        self.fe = fe
        self.balancer = fe.balancer
        self.transport = fe.transport
        self.secure = fe.secure
        self.head = head
        self.method = head.method
        self.keep_alive = head.keep_alive
        self.cookie_name = cookie_name
        self.new_session = new_session
        self.state = BODY

    def __repr__(self) -> str:
        return f"<Exchange {self.method!r} {STATE_NAMES[self.state]} node={self.node}>"

    # -- the request body (called by the client connection)

    def hold(self, body: bytes) -> None:
        """
        The whole body came with the head and is small enough to keep for
        a retry: it is sent with the head.
        """
        self.body = [body]
        self.body_size = len(body)

    def expect_body(self, retry_body: int) -> None:
        """
        The body is still to come: held (if at most C{retry_body} bytes)
        until complete, else streamed.
        """
        head = self.head
        self.body = []
        self.body_done = False
        if head.framing == LENGTH:
            self.body_left = head.length
            self.replayable = head.length <= retry_body
        else:
            self.scanner = ChunkedScanner()
        self.plan, self.plan_complete = self.balancer.plan(head)

    def feed_body(self, data: bytes, max_body: int, retry_body: int) -> Optional[bytes]:
        """
        Bytes of the body: held or streamed.  Returns what followed the
        body in C{data} (a pipelined request), or C{None} when the body is
        refused (the client connection was answered 400 or 413).  Once the
        body is complete (C{body_done}) the request is sent.
        """
        if self.head.framing == LENGTH:
            n = self.body_left
            if len(data) > n:
                body, extra = data[:n], data[n:]
            else:
                body, extra = data, b""
            self.body_left = n - len(body)
            done = self.body_left == 0
        else:
            scanner = self.scanner
            try:
                k = scanner.feed(data)
            except ValueError:
                self.fail_request(400)
                return None
            if scanner.size > max_body:
                self.fail_request(413)
                return None
            if k < 0:
                body, extra, done = data, b"", False
            else:
                body, extra, done = data[:k], data[k:], True
        if body:
            if self.streaming:
                conn = self.conn
                send_now(conn.transport, body)
                conn.deadline = self.fe.seconds() + self.fe.response_timeout
            else:
                self.body.append(body)
                self.body_size += len(body)
        if done:
            self.body_done = True
            if self.streaming:
                self._stop_streaming(self.conn)
        elif not self.streaming and self.body_size > retry_body:
            # Too large to hold for a retry: stream it to the first server,
            # and stop reading until that server is connected.
            self.replayable = False
            self.fe.pause()
        return extra

    def dispatch(self) -> None:
        """
        Send the request once its body is complete, or, for a body too large
        to hold for a retry, as soon as the head is known.
        """
        if self.state == BODY and (self.body_done or not self.replayable):
            self._try_next()

    def fail_request(self, status: int) -> None:
        """
        The client connection answers C{status} itself and closes: nothing
        more of this exchange reaches the client.
        """
        self.state = FAILED
        self.fe.reject(status)

    def client_lost(self) -> None:
        """
        The client connection is gone: drop the server's side too.
        """
        self.state = FAILED
        if self.connecting is not None:
            self.connecting.waiter = None
            self.connecting = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.transport.abortConnection()
            self.balancer.nodes.finished(conn.node, None)

    # -- servers

    def first_attempt(self, session=None) -> None:
        """
        Send a request whose body (if any) is complete: to the cookie's
        server when it is available, found without planning the rest.
        C{session} is L{Balancer.session} of the request, if known.
        """
        b = self.balancer
        now = self.began = self.fe.seconds()
        node = b.first(b.session(self.head.cookie) if session is None else session, now)
        if node is None:
            self.plan, self.plan_complete = b.plan(self.head)
            self._try_next(now)
            return
        # _try_next for a plan of one, straight through.
        self.plan = (node,)
        self.plan_complete = False
        self.attempt = 1
        self.node = node
        conn = b.pool.take(node, now, self.method not in IDEMPOTENT)
        if conn is not None:
            self.server_connected(conn, now)
        else:
            self.state = CONNECTING
            self.connecting = b.pool.connect(node, self)

    def _try_next(self, now: Optional[float] = None) -> None:
        plan = self.plan
        if self.attempt >= len(plan) and not self.plan_complete:
            rest, self.plan_complete = self.balancer.plan(self.head, tried=plan)
            plan = self.plan = plan + rest
        if self.attempt >= len(plan):
            self._fail(502 if self.sent else 503)
            return
        if self.attempt:
            retries = self.balancer.retries
            failed = plan[self.attempt - 1]
            retries[failed] = retries.get(failed, 0) + 1
        node = plan[self.attempt]
        self.sent = False
        if now is None:
            now = self.fe.seconds()
        if not self.attempt:
            self.began = now
        self.attempt += 1
        self.node = node
        pool = self.balancer.pool
        # Like HAProxy's "http-reuse safe": a request that must not be sent
        # twice goes only on a connection that answered moments ago (or a
        # new one), so that it does not meet a server closing an idle one.
        conn = pool.take(node, now, self.method not in IDEMPOTENT)
        if conn is not None:
            self.server_connected(conn, now)
        else:
            self.state = CONNECTING
            self.connecting = pool.connect(node, self)

    def server_connect_failed(self, node: str, reason: Failure) -> None:
        """
        Nothing was sent: passively mark the server down and try the next.
        """
        self.connecting = None
        if self.state != CONNECTING:
            return
        self.log.info(
            "server {node} unreachable: {error}", node=node, error=reason.getErrorMessage()
        )
        self.balancer.nodes.refused(node, self.fe.seconds())
        self._try_next()

    def server_connected(self, conn: BackendProtocol, now: Optional[float] = None) -> None:
        """
        A connection to the server of this attempt: send the request (and
        the body held so far; the rest is streamed).
        """
        self.connecting = None
        if self.state >= DONE:
            self.balancer.pool.release(conn)
            return
        self.state = SENT
        self.conn = conn
        conn.attach(self)
        self.balancer.nodes.started(conn.node)
        if now is None:
            now = self.fe.seconds()
        self.started = now
        fe = self.fe
        conn.deadline = now + fe.response_timeout
        body = self.body
        if body:
            send_now(conn.transport, self.head.forward + b"".join(body))
        else:
            send_now(conn.transport, self.head.forward)
        self.sent = True
        if not self.body_done:
            self.streaming = True
            self.body = ()
            conn.transport.registerProducer(fe.throttle, True)
            fe.resume()

    # -- answers (called by BackendProtocol)

    def response_started(self, head: ResponseHead) -> None:
        """
        A response head that does not finish the exchange was relayed: the
        client has part of the answer; a session cookie it sets is learned
        (sticky) or counted (new-session limit).
        """
        self.state = RESPONDING
        if head.session:
            b = self.balancer
            if b.sticky:
                b.sticky_table.learn(head.session, self.node, self.fe.seconds())
            if self.new_session and b.new_sessions is not None:
                # (None: a reload turned the limit off meanwhile.)
                self.new_session = False
                b.new_sessions.charge(self.fe.client_key, self.fe.seconds())

    def response_done(self, conn: BackendProtocol, reusable: bool) -> None:
        """
        The whole answer is with the client: C{conn} goes back to the pool
        when C{reusable}, and the client connection reads its next request.
        """
        b = self.balancer
        fe = self.fe
        now = fe.seconds()
        self.state = DONE
        self.conn = None
        b.nodes.finished(conn.node, now - self.started)
        if b.request_seconds is not None:
            b.request_seconds.observe(now - self.began)
        if self.streaming:
            self._stop_streaming(conn)
        if reusable and self.body_done:
            b.pool.release(conn, now)
        else:
            conn.transport.loseConnection()
        fe.finished(now, self.keep_alive and self.body_done)

    def _detach(self, conn: BackendProtocol) -> bool:
        """
        The exchange with C{conn} ended without an answer for the client;
        returns whether the request still waits for one.
        """
        self.conn = None
        self.balancer.nodes.finished(conn.node, None)
        if self.streaming:
            self._stop_streaming(conn)
        return self.state < DONE

    def backend_failed(self, conn: BackendProtocol, reason: Failure) -> None:
        """
        The server failed (closed, a bad answer, a response timeout): the
        request is retried where L{may_retry} allows, else answered 502/504;
        a client that has part of the answer is disconnected.
        """
        b = self.balancer
        if not self._detach(conn):
            return
        if self.state == RESPONDING:
            # Part of the answer is already with the client: only closing
            # the connection tells it the response is incomplete.
            self.log.warn(
                "server {node} failed mid-response: {error}",
                node=conn.node,
                error=reason.getErrorMessage(),
            )
            self.state = FAILED
            self.fe.close()
            return
        replayable = self.replayable and self.body_done
        method = self.method.decode("ascii", "replace")
        if (
            conn.stale()
            and not self.fresh_retry
            and not reason.check(ResponseTimeout, ServerGone)
            and may_retry(self.method, self.sent, replayable)
        ):
            # A pooled connection that failed before any answer was most
            # likely closed by the server while idle: the same server gets
            # the request again, once, on a new connection, rather than the
            # next server (which, in plugin mode, would take the session
            # over).
            self.fresh_retry = True
            b.retries[conn.node] = b.retries.get(conn.node, 0) + 1
            self.log.info(
                "retrying {method} on a new connection to {node}: {error}",
                method=method,
                node=conn.node,
                error=reason.getErrorMessage(),
            )
            self.sent = False
            self.state = CONNECTING
            self.connecting = b.pool.connect(conn.node, self)
            return
        if may_retry(self.method, self.sent, replayable):
            self.log.info(
                "retrying {method} after {node} failed: {error}",
                method=method,
                node=conn.node,
                error=reason.getErrorMessage(),
            )
            self._try_next()
        else:
            self.log.info(
                "not retrying {method} after {node} failed: {error}",
                method=method,
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
        if not (self.replayable and self.body_done):
            self._fail(503)
            return
        self.log.info("{node} did not serve {method}: trying the next server", node=conn.node,
                      method=self.method.decode("ascii", "replace"))
        self.sent = False
        self._try_next()

    def _fail(self, status: int) -> None:
        self.log.warn(
            "answering {status} to {method}: no server could take it",
            status=status,
            method=self.method.decode("ascii", "replace"),
        )
        self.fail_request(status)

    def _stop_streaming(self, conn: BackendProtocol) -> None:
        """
        The body is through (or the server gone): the server's transport may
        have paused us and will no longer resume us, so resume here.
        """
        self.streaming = False
        conn.transport.unregisterProducer()
        self.fe.resume(force=True)
