"""
The balancer in front of a real session server (one process, real sockets on
127.0.0.1; issue 9): limits that agree, the session server's reading of two
session cookies, and HTTPS clients that offer ALPN.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from appliance.balancer.service import BalancerService
from appliance.config import ClusterConfig
from appliance.server import hosting
from appliance.server.node import SessionNode

from .certs import make_ca, make_leaf
from .helpers import SKIP_TLS_ON_PYPY, cluster_ini, free_ports, quorum_for


def exchange(port: int, request: bytes, context: "ssl.SSLContext" = None):
    """
    Send C{request} (which asks to close) and read until the connection
    closes: (response bytes, negotiated ALPN protocol).  Blocking: run it
    in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        conn = raw if context is None else context.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(request)
        chunks = []
        while True:
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
        alpn = conn.selected_alpn_protocol() if context is not None else None
        return b"".join(chunks), alpn


def status_and_body(response: bytes):
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class ServerBehindBalancerTests(TestCase):
    timeout = 30

    def start(self, balancer_extra: str = "", https: bool = False):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.lb, self.lbs = free_ports(2)
        balancer = f"\n[balancer:lb1]\nlisten = 127.0.0.1:{self.lb}\n{balancer_extra}"
        if https:
            ca = make_ca(self.dir)
            self.ca = ca[2]
            cert, key = make_leaf(self.dir, ca, "lb")
            balancer += f"https = 127.0.0.1:{self.lbs}\ntls_cert = {cert}\ntls_key = {key}\n"
        text, ports = cluster_ini(names=("s1",), balancer=balancer)
        self.cluster = ClusterConfig.from_string(text)
        self.node = SessionNode(
            reactor, self.cluster, "s1", time.monotonic, call=None, connected=lambda p: False,
            peer_load=lambda p: 0, send=None, quorum=quorum_for(reactor, self.cluster, "s1", time.monotonic),
        )
        self.addCleanup(self.node.stop)
        self.server_port = ports["s1"][0]
        site = hosting.site(reactor, self.cluster, self.node, lambda: {"node": "s1", "status": "ok"})
        listening = reactor.listenTCP(self.server_port, site, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        service = BalancerService(reactor, self.cluster, self.cluster.balancers[0])
        service.startService()
        self.addCleanup(service.stopService)

    def get(self, port: int, lines=(), context=None, target=b"/cart"):
        head = b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: app.test", b"Connection: close", *lines])
        return threads.deferToThread(exchange, port, head + b"\r\n\r\n", context)

    @inlineCallbacks
    def test_head_at_the_limit_reaches_the_application(self):
        """A head of exactly max_header_bytes, forwarding headers included, is served by the session server."""
        self.start()
        lines = [b"X-Forwarded-For: " + b"203.0.113.7, " * 20 + b"203.0.113.8", b"Forwarded: for=203.0.113.8"]
        size = len(b"\r\n".join([b"GET /cart HTTP/1.1", b"Host: app.test", b"Connection: close", *lines]))
        pad = 16 * 1024 - size - len(b"\r\nX-Pad: ")
        response, _ = yield self.get(self.lb, lines + [b"X-Pad: " + b"p" * pad])
        self.assertEqual(status_and_body(response), (200, b'{"items": []}'))

    @inlineCallbacks
    def test_configured_limit_holds_at_the_server(self):
        """With a larger max_header_bytes, a header line longer than twisted.web's default is served too."""
        self.start("max_header_bytes = 48KiB\n")
        response, _ = yield self.get(self.lb, [b"X-Big: " + b"b" * 40000])
        self.assertEqual(status_and_body(response), (200, b'{"items": []}'))

    @inlineCallbacks
    def test_over_the_limit_refused_by_the_balancer(self):
        """A head over max_header_bytes gets 431 from the balancer itself."""
        self.start()
        response, _ = yield self.get(self.lb, [b"X-Pad: " + b"p" * 16500])
        self.assertEqual(status_and_body(response)[0], 431)

    @inlineCallbacks
    def test_server_reads_the_first_valid_session_cookie(self):
        """The session server reads the first session cookie that reads as a session, as the balancer does."""
        self.start()
        body = b"item=apple"
        post = (
            b"POST /cart/items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        response, _ = yield threads.deferToThread(exchange, self.server_port, post)
        value = response.split(b"Set-Cookie: APPSESSION=")[1].split(b";")[0]
        stale = b"C" * 22 + b"!s1!"
        for header in (value + b"; APPSESSION=" + stale, b"junk; APPSESSION=" + value):
            response, _ = yield self.get(self.server_port, [b"Cookie: APPSESSION=" + header])
            self.assertEqual(json.loads(status_and_body(response)[1]), {"items": ["apple"]}, header)

    @inlineCallbacks
    def test_alpn_clients(self):
        """Clients offering h2 and http/1.1 get http/1.1; one offering h2 alone gets no protocol, not an alert."""
        self.start(https=True)
        for offered, chosen in ((["h2", "http/1.1"], "http/1.1"), (["h2"], None), (["http/1.1"], "http/1.1")):
            context = ssl.create_default_context(cafile=self.ca)
            context.set_alpn_protocols(offered)
            response, alpn = yield self.get(self.lbs, context=context)
            self.assertEqual((alpn, status_and_body(response)), (chosen, (200, b'{"items": []}')), offered)

    test_alpn_clients.skip = SKIP_TLS_ON_PYPY
