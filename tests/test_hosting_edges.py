"""
The session server's HTTP edge in memory and against real processes:
request bodies however they are framed (chunked included, sent by curl),
and the short text 404/405 answers for what no application handles.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource, server

from appliance.config import ClusterConfig
from appliance.server import hosting, session_of
from appliance.server.node import SessionNode

from .helpers import RealNodes, cluster_ini, free_ports, http, quorum_for, wait_for
from .memory_http import exchange, request, responses

ECHO = """
[app:echo]
mount = /echo
wsgi = tests.test_hosting_edges:echo
threads = no
"""


def echo(environ, start_response):
    """
    Answers with what a WSGI application was handed: the length, the body
    read to its end, and whether a Transfer-Encoding header was passed on.
    """
    body = environ["wsgi.input"].read()
    data = json.dumps(
        {
            "length": environ["CONTENT_LENGTH"],
            "body": body.decode("latin-1"),
            "transfer_encoding": "HTTP_TRANSFER_ENCODING" in environ,
            "terminated": environ.get("wsgi.input_terminated"),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class Pending(resource.Resource):
    """
    Answers nothing: each request waits in L{PENDING} with its session.
    """

    isLeaf = True

    def render_GET(self, request):
        session_of(request)["pending"] = True
        PENDING.append(request)
        return server.NOT_DONE_YET


PENDING: list = []
pending = Pending()

PENDING_APP = """
[app:pending]
mount = /pending
resource = tests.test_hosting_edges:pending
"""


def inline_config(extra_apps: str = "", cluster_extra: str = "") -> ClusterConfig:
    """
    One node, no peers; the cart (and C{extra_apps}) in the reactor thread
    so that a request is answered within C{dataReceived}.
    """
    text, _ = cluster_ini(names=("s1",), extra=cluster_extra, apps=extra_apps)
    text = text.replace("wsgi = appliance.demo.cart:app", "wsgi = appliance.demo.cart:app\nthreads = no")
    return ClusterConfig.from_string(text)


def memory_site(cluster: ClusterConfig, clock=None):
    clock = clock or MemoryReactorClock()
    node = SessionNode(
        clock, cluster, "s1", clock.seconds, call=None, connected=lambda p: False, peer_load=lambda p: 0, send=None,
        quorum=quorum_for(clock, cluster, "s1", clock.seconds),
    )
    return hosting.site(clock, cluster, node, lambda: {"node": "s1", "status": "ok"}), node


class BodyFramingTests(SynchronousTestCase):
    def setUp(self):
        self.site, self.node = memory_site(inline_config(ECHO))

    def one(self, raw: bytes):
        (response,) = [r for r in responses(exchange(self.site, raw)) if r[0] != 100]
        return response

    def test_chunked_form_reaches_the_cart(self):
        """A chunked POST to the cart is read whole: the item is added, not refused with 400."""
        code, _, body = self.one(
            request("POST", "/cart/items", b"item=apple", ("Content-Type: application/x-www-form-urlencoded",), chunked=True)
        )
        self.assertEqual((code, json.loads(body)), (200, ["apple"]))

    def test_chunked_environ(self):
        """A chunked body is handed over decoded, CONTENT_LENGTH is its size, Transfer-Encoding is not passed on."""
        payload = b"x" * 1000 + b"end"
        code, _, body = self.one(request("PUT", "/echo", payload, chunked=True))
        self.assertEqual(code, 200)
        self.assertEqual(
            json.loads(body),
            {"length": "1003", "body": payload.decode(), "transfer_encoding": False, "terminated": None},
        )

    def test_length_framed_and_empty_bodies(self):
        """A Content-Length body keeps its length; a request without a body has an empty CONTENT_LENGTH."""
        _, _, framed = self.one(request("POST", "/echo", b"abc"))
        self.assertEqual(json.loads(framed)["length"], "3")
        _, _, empty = self.one(request("GET", "/echo"))
        self.assertEqual((json.loads(empty)["length"], json.loads(empty)["body"]), ("", ""))
        _, _, zero = self.one(request("POST", "/echo", chunked=True))
        self.assertEqual((json.loads(zero)["length"], json.loads(zero)["body"]), ("0", ""))


class NotFoundTests(SynchronousTestCase):
    def setUp(self):
        self.site, _ = memory_site(inline_config())

    def one(self, method: str, path: str):
        (response,) = responses(exchange(self.site, request(method, path)))
        return response

    def assertText(self, response, code: int, allow=None):
        status, headers, body = response
        self.assertEqual(status, code)
        self.assertEqual(headers[b"content-type"], [b"text/plain; charset=utf-8"])
        self.assertTrue(body.startswith(b"%d " % code) and len(body) < 64, body)
        self.assertEqual(headers.get(b"allow"), None if allow is None else [allow])

    def test_root_and_unknown_paths(self):
        """/ and paths no application is mounted on are a short text 404."""
        for path in ("/", "/nothing", "/_appliance", "/cartx"):
            self.assertText(self.one("GET", path), 404)

    def test_health_other_methods(self):
        """The health endpoint answers GET and HEAD; other methods get 405 with Allow."""
        status, headers, _ = self.one("GET", "/_appliance/health")
        self.assertEqual((status, headers[b"content-type"]), (200, [b"application/json"]))
        (head,) = responses(exchange(self.site, request("HEAD", "/_appliance/health")))
        self.assertEqual(head[0], 200)
        for method in ("POST", "PUT", "DELETE", "BREW"):
            self.assertText(self.one(method, "/_appliance/health"), 405, b"GET, HEAD")

    def test_cart_methods_and_paths(self):
        """The cart answers a wrong method on its paths with 405 and Allow, an unknown path with 404."""
        self.assertText(self.one("PUT", "/cart"), 405, b"GET, HEAD")
        self.assertText(self.one("GET", "/cart/items"), 405, b"POST")
        self.assertText(self.one("GET", "/cart/items/apple"), 405, b"DELETE")
        self.assertText(self.one("GET", "/cart/logout"), 405, b"POST")
        self.assertText(self.one("GET", "/cart/nothing"), 404)


class CurlUploadTests(SynchronousTestCase):
    def setUp(self):
        self.curl = shutil.which("curl")
        if self.curl is None:
            self.fail("curl is not installed (apt-get install curl)")
        (self.lb,) = free_ports(1)
        balancer = f"""
[balancer:lb1]
listen = 127.0.0.1:{self.lb}
node = s1
health_interval = 200ms
health_rise = 1
"""
        self.nodes = RealNodes(self, names=("s1",), balancer=balancer)
        self.nodes.start("s1", "balancer")
        wait_for(lambda: http("GET", f"http://127.0.0.1:{self.lb}/_appliance/lb-health")[0] == 200, 30, "balancer")

    def upload(self, url: str, data: bytes):
        done = subprocess.run(
            [self.curl, "-sS", "-v", "-T", "-", "-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded",
             "-w", "\n%{http_code}", "--max-time", "10", url],
            input=data, capture_output=True, timeout=20,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"Transfer-Encoding: chunked", done.stderr)
        body, _, code = done.stdout.rpartition(b"\n")
        return int(code), body

    def test_curl_chunked_upload(self):
        """curl -T - (a chunked body) adds to the cart, straight to a session server and through the balancer."""
        for url in (self.nodes.url("s1", "/cart/items"), f"http://127.0.0.1:{self.lb}/cart/items"):
            code, body = self.upload(url, b"item=apple")
            self.assertEqual((code, json.loads(body)), (200, ["apple"]), url)


class CountingTransport(StringTransport):
    """
    A StringTransport that keeps each write call apart and counts how often
    the connection's addresses are asked for.
    """

    def __init__(self):
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8081), peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.calls = []
        self.asked = 0

    def write(self, data):
        self.calls.append(data)
        super().write(data)

    def writeSequence(self, seq):
        self.calls.append(b"".join(seq))
        super().write(b"".join(seq))

    def getHost(self):
        self.asked += 1
        return super().getHost()

    def getPeer(self):
        self.asked += 1
        return super().getPeer()


class OneWriteTests(SynchronousTestCase):
    """
    The session server's channel (L{hosting.NodeChannel}): a held response
    leaves in one write, head and body together, and the connection's
    addresses are read once however many requests it carries.
    """

    def setUp(self):
        self.site, _ = memory_site(inline_config())
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = CountingTransport()
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)

    def test_pipelined_responses_one_write_each(self):
        """Three pipelined requests on one session: three writes, each one whole response, in order."""
        (first,) = responses(self.feed(request("POST", "/cart/items", b"item=apple", FORM)))
        cookie = first[1][b"set-cookie"][0].split(b";")[0].decode()
        self.transport.calls.clear()
        raw = b"".join(
            request(method, path, body, FORM + (f"Cookie: {cookie}",))
            for method, path, body in (("POST", "/cart/items", b"item=pear"), ("GET", "/cart", b""), ("HEAD", "/cart", b""))
        )
        self.channel.dataReceived(raw)
        self.assertEqual(len(self.transport.calls), 3, self.transport.calls)
        post, get, head = self.transport.calls
        self.assertEqual([(r[0], json.loads(r[2])) for r in responses(post + get)], [(200, ["apple", "pear"]), (200, {"items": ["apple", "pear"]})])
        self.assertTrue(head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head)
        self.assertEqual(self.transport.asked, 2)

    def test_closing_request_sends_before_closing(self):
        """A request that asks to close gets its whole response, then the connection closes."""
        data = self.feed(request("POST", "/cart/items", b"item=apple", FORM + ("Connection: close",)))
        (response,) = responses(data)
        self.assertEqual((response[0], json.loads(response[2])), (200, ["apple"]))
        self.assertEqual(len(self.transport.calls), 1)
        self.assertTrue(self.transport.disconnecting)

    def feed(self, raw: bytes) -> bytes:
        self.channel.dataReceived(raw)
        return self.transport.value()


class ClientLeavesTests(SynchronousTestCase):
    """
    A client that leaves while its request holds the session: the session
    is released at once, and what the request did is not committed.
    """

    def test_lost_connection_releases_the_session(self):
        site, node = memory_site(inline_config(PENDING_APP))
        (created,) = responses(exchange(site, request("POST", "/cart/items", b"item=apple", FORM)))
        cookie = "Cookie: " + created[1][b"set-cookie"][0].split(b";")[0].decode()
        del PENDING[:]
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        channel.makeConnection(CountingTransport())
        channel.dataReceived(request("GET", "/pending", headers=(cookie,)))
        self.assertEqual(len(PENDING), 1)
        channel.connectionLost(None)
        (after,) = responses(exchange(site, request("POST", "/cart/items", b"item=pear", FORM + (cookie,))))
        self.assertEqual((after[0], json.loads(after[2])), (200, ["apple", "pear"]))
        PENDING[0].finish()
        (whole,) = responses(exchange(site, request("GET", "/cart", headers=(cookie,))))
        self.assertEqual(json.loads(whole[2]), {"items": ["apple", "pear"]})
        self.assertNotIn("pending", node.store.get(cookie.split("=", 1)[1][:22]).values)


FORM = ("Content-Type: application/x-www-form-urlencoded",)
