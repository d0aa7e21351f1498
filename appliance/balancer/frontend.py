"""
The client side of the proxy: a plain L{Protocol} that buffers only the
request head, holds or streams the body, and hands the request to
an L{Exchange} (C{exchange.py}), which forwards the raw bytes (rewritten by
L{parse_request_head}) to a pooled server connection and tries the next
server when the rules in L{may_retry} allow.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .exchange import RESPONDING, Exchange
from .flow import Throttle
from .framing import (
    CRLF,
    HEAD_END,
    LENGTH,
    NO_BODY,
    Reject,
    RequestHead,
    error_response,
    parse_request_head,
)
from .local import INTERNAL, is_lb_health, lb_health, not_found, redirect_https, too_many_sessions
from .ratelimit import client_key

# In a head not yet complete: a CR not followed by LF, an LF without its CR,
# a NUL.  Such a head can only be refused, so it is refused at once rather
# than after head_timeout (a bare-LF client would wait for 408).
_BARE = re.compile(rb"\r(?=[^\n])|(?<!\r)\n|\x00")

if TYPE_CHECKING:  # pragma: no cover
    from .service import Balancer


#: The server a request is counted under when the balancer answered it itself.
LOCAL = "none"

# The client connection: reading a request head, busy with a request, closed.
HEAD, BUSY, CLOSED = 0, 1, 2
# What the client connection's deadline is for: the time between requests,
# a request head, a request body, a new connection's first request head.
IDLE, HEAD_WAIT, BODY_WAIT, FRESH = 0, 1, 2, 3


class FrontendProtocol(Protocol):
    """
    One client connection: requests are handled one at a time, in order
    (pipelined requests wait in the buffer).  Each forwarded request is an
    L{Exchange} (C{exchange.py}), which calls back the methods listed there.
    """

    log = Logger()

    def __init__(self, balancer: "Balancer", secure: bool):
        self.balancer = balancer
        self.secure = secure
        # The session cookie the backend reads from responses: always in
        # sticky mode (learning) and over TLS (Secure); for a request
        # without a session when new sessions are limited (counting).
        self._response_cookie = balancer.cookie_bytes if (secure or balancer.sticky) else None
        self.exchange: Optional[Exchange] = None
        self.deadline: Optional[float] = None
        self._deadline_kind = IDLE
        self._state = HEAD
        self._buf = b""
        self._checked = 0
        self._client = b""
        self.client_key = ""
        self._paused = False
        # Read once per connection: kept here rather than looked up through
        # the balancer and its config every time.
        config = balancer.config
        self.seconds = balancer.clock.seconds
        self._limits = balancer.limits
        self._max_head = config.max_header_bytes
        self._max_body = balancer.limits.max_body_bytes
        self._idle_timeout = config.idle_timeout
        self._head_timeout = config.head_timeout
        self._body_timeout = config.body_timeout
        self._body_rate = config.min_body_rate
        self.response_timeout = config.response_timeout
        self._retry_body = config.retry_body_bytes
        self._forward_internal = config.forward_internal
        self._new_sessions = balancer.new_sessions
        self._sessions_get = balancer.kept_sessions.get
        self._redirect = config.redirect_https and not secure

    # -- connection events

    def connectionMade(self) -> None:
        host = self.transport.getPeer().host
        self._client = host.encode("ascii", "replace")
        if self._new_sessions is not None:
            self.client_key = client_key(host)
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        self.throttle = Throttle(self.transport)
        self.balancer.frontends.add(self)
        # A new connection has head_timeout for its first request head,
        # counted from now: one that sends nothing is not kept for
        # idle_timeout.
        self._deadline_kind = FRESH
        self.deadline = self.seconds() + self._head_timeout

    def connectionLost(self, reason: Failure = None) -> None:
        self._state = CLOSED
        self.balancer.frontends.discard(self)
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.client_lost()

    def _wait(self, kind: int) -> None:
        self._deadline_kind = kind
        if kind == HEAD_WAIT:
            self.deadline = self.seconds() + self._head_timeout
        elif kind == BODY_WAIT:
            self.deadline = self.seconds() + self._body_timeout
        else:
            self.deadline = self.seconds() + self._idle_timeout

    def expired(self) -> None:
        """
        The deadline passed: a slow request head, or a body slower than
        C{min_body_rate}, gets 408 (unless part of an answer was sent); a
        connection idle since its last answer, or that never sent a byte,
        is closed.
        """
        self.deadline = None
        if self._state == CLOSED:
            return
        kind = self._deadline_kind
        ex = self.exchange
        if kind == HEAD_WAIT:
            self.reject(408)
        elif kind == BODY_WAIT and (ex is None or ex.state != RESPONDING):
            if ex is None:
                self.reject(408)
            else:
                ex.fail_request(408)
        else:
            self.close()

    # -- reading requests

    def dataReceived(self, data: bytes) -> None:
        if self._state == HEAD:
            if self._buf:
                buf, self._buf = self._buf + data, b""
                self._read_head(buf, self._checked)
            else:
                self._read_head(data)
        elif self._state == BUSY:
            ex = self.exchange
            if ex is None or ex.body_done:
                self._buf += data
                self._pause_if_full()
            else:
                self._read_body(ex, data)

    def _read_head(self, buf: bytes, checked: int = 0) -> None:
        """
        Read the request at the start of C{buf} (of which the first
        C{checked} bytes were seen before, as an incomplete head).  The
        requests the balancer answers itself are answered in a loop, not
        by recursion, however many are pipelined.
        """
        while True:
            if buf[0] == 13:
                # Blank lines before a request line are ignored (RFC 9112 2.2).
                i = 0
                while buf.startswith(CRLF, i):
                    i += 2
                buf = buf[i:]
                checked = 0
            end = buf.find(HEAD_END, checked - 3 if checked > 3 else 0)
            if end < 0:
                self._incomplete(buf, checked)
                return
            if end > self._max_head:
                self.reject(431)
                return
            head = parse_request_head(buf[:end], self._limits, self._client, self.secure)
            if type(head) is Reject:
                self.log.debug("refused {status}: {reason}", status=head.status, reason=head.reason)
                self.reject(head.status)
                return
            self.deadline = None
            self._state = BUSY
            keep_alive = head.keep_alive
            start = end + 4
            session = None
            new_session = False
            if head.target.startswith(INTERNAL):
                local = self._internal(head)
            elif self._redirect:
                local = redirect_https(head, keep_alive, self.balancer.https_port)
            elif self._new_sessions is not None:
                # Kept per Cookie header: one look-up for a known one.
                session = self._sessions_get(head.cookie) or self.balancer.session(head.cookie)
                if session[1].sid is None:
                    local = self._limit_new_session(head)
                    new_session = local is None
                else:
                    local = None
            else:
                local = None
            if local is None:
                ex = self.exchange = Exchange(
                    self, head, self.balancer.cookie_bytes if new_session else self._response_cookie, new_session
                )
                if head.framing == NO_BODY:
                    # The common case, straight through: no body, the next
                    # request (if pipelined) waits in the buffer.
                    if len(buf) > start:
                        self._buf = buf[start:]
                        self._pause_if_full()
                    ex.first_attempt(session)
                else:
                    self._start_body(ex, session, buf, start)
                return
            response, keep = local
            self.transport.write(response)
            if not keep:
                self.close()
                return
            self._state = HEAD
            buf = buf[start:]
            if not buf:
                self._wait(IDLE)
                return
            self._deadline_kind = IDLE
            checked = 0

    def _incomplete(self, buf: bytes, checked: int) -> None:
        """
        C{buf} holds part of a request head: keep it, unless it is already
        too large or holds what no head may (a bare CR or LF, a NUL).
        """
        if len(buf) > self._max_head:
            self.reject(431)
        elif _BARE.search(buf, checked - 1 if checked else 0) is not None:
            self.reject(400)
        else:
            self._buf = buf
            self._checked = len(buf)
            kind = self._deadline_kind
            if kind == IDLE and buf:
                self._wait(HEAD_WAIT)
            elif kind == FRESH and buf:
                # head_timeout counts from the connection's start.
                self._deadline_kind = HEAD_WAIT

    def _internal(self, head: RequestHead):
        """
        A target under /_appliance: the balancer's own health, or an
        endpoint of the servers, forwarded only with C{forward_internal}.
        """
        if is_lb_health(head.target):
            return lb_health(head, head.keep_alive)
        if self._forward_internal:
            return None
        return not_found(head, head.keep_alive)

    def _limit_new_session(self, head: RequestHead):
        """
        A request without a valid session cookie, from a client over its
        new-session limit, gets 429; one under it is counted if its answer
        sets a session cookie (L{Exchange.response_started}).
        """
        wait = self._new_sessions.wait(self.client_key, self.seconds())
        if wait:
            return too_many_sessions(head, head.keep_alive, wait)
        return None

    def _start_body(self, ex: Exchange, session, buf: bytes, start: int) -> None:
        """
        The request whose head ends at C{buf[start]} has a body: hold it
        (and send the request once it is complete) or stream it.
        """
        head = ex.head
        if head.expect_continue:
            # The body is read here (held for a retry or streamed), so the
            # client is told to go on now rather than when a server says so.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if head.framing == LENGTH and head.length <= self._retry_body and len(buf) - start >= head.length:
            # A whole small body in the same read: held for a retry, sent
            # with the head.
            stop = start + head.length
            ex.hold(buf[start:stop])
            if len(buf) > stop:
                self._buf = buf[stop:]
                self._pause_if_full()
            ex.first_attempt(session)
            return
        ex.expect_body(self._retry_body)
        self._wait(BODY_WAIT)
        rest = buf[start:]
        if rest:
            self._read_body(ex, rest)
            return
        ex.dispatch()

    def _read_body(self, ex: Exchange, data: bytes) -> None:
        extra = ex.feed_body(data, self._max_body, self._retry_body)
        if extra is None:
            return
        if extra:
            self._buf += extra
        if ex.body_done:
            self.deadline = None
            self._pause_if_full()
            ex.dispatch()
            return
        # The body's deadline: body_timeout from its last bytes at most, and
        # moved on by one second per min_body_rate bytes, so a body sent
        # slower than that rate (one byte now and then) runs out of time.
        limit = self.seconds() + self._body_timeout
        if self._body_rate and self.deadline is not None:
            deadline = self.deadline + (len(data) - len(extra)) / self._body_rate
            self.deadline = deadline if deadline < limit else limit
        else:
            self.deadline = limit
        ex.dispatch()

    # -- called by the exchange

    def finished(self, now: float, keep_alive: bool) -> None:
        """
        The current exchange is over: read the next request (if any is
        buffered), or close the connection.
        """
        self.exchange = None
        if not keep_alive:
            self.close()
            return
        self._state = HEAD
        if self._paused:
            self.resume()
        self._deadline_kind = IDLE
        self.deadline = now + self._idle_timeout
        if self._buf:
            buf, self._buf = self._buf, b""
            self._read_head(buf)

    def reject(self, status: int) -> None:
        """
        Answer C{status} (counted as the balancer's own answer) and close.
        """
        requests = self.balancer.requests
        if requests is not None:
            key = (LOCAL, status)
            requests[key] = requests.get(key, 0) + 1
        self._state = CLOSED
        self.deadline = None
        self.transport.write(error_response(status))
        self.transport.loseConnection()

    def close(self) -> None:
        self._state = CLOSED
        self.transport.loseConnection()

    # -- flow control

    def _pause_if_full(self) -> None:
        if len(self._buf) > self._max_head:
            self.pause()

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def resume(self, force: bool = False) -> None:
        """
        Read from the client again (with C{force}, even if this side did
        not pause it: a server's transport may have).
        """
        if self._paused or force:
            self._paused = False
            self.transport.resumeProducing()


class FrontendFactory(Factory):
    noisy = False

    def __init__(self, balancer: "Balancer", secure: bool):
        self.balancer = balancer
        self.secure = secure

    def buildProtocol(self, addr) -> FrontendProtocol:
        proto = FrontendProtocol(self.balancer, self.secure)
        proto.factory = self
        return proto
