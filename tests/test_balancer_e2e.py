"""
End-to-end tests of the balancer: real sockets on 127.0.0.1, stand-in
session servers (in-process twisted.web sites that set the session cookie),
bounded waits, everything closed in cleanups.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from appliance.balancer.service import BalancerService
from appliance.config import Address, BalancerConfig, ClusterConfig, ClusterSettings, NodeConfig

from .helpers import SKIP_TLS_ON_PYPY

SID = "AAAAAAAAAAAAAAAAAAAAAA"
NEW_SID = "BBBBBBBBBBBBBBBBBBBBBB"
BIG = os.urandom(3 * 1024 * 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn(Resource):
    """
    A session server stand-in: records each request, answers with its name
    and the session cookie naming it as primary (or keeps the cookie's
    session when it already names it); C{mode = "die"} drops the connection
    after reading the request, halfway through the response head.
    """

    isLeaf = True

    def __init__(self, name: str, peer: str):
        super().__init__()
        self.name = name
        self.peer = peer
        self.mode = "ok"
        self.requests: List[Tuple[bytes, bytes, Dict[bytes, List[bytes]], bytes]] = []

    def render(self, request):
        if request.path == b"/_appliance/health":
            return b"alive"
        if request.path == b"/big":
            return BIG
        if request.path == b"/chunked":
            for i in range(50):
                request.write(b"piece %d;" % i)
            request.finish()
            return NOT_DONE_YET
        body = request.content.read()
        headers = {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method, request.uri, headers, body))
        if self.mode == "die":
            request.channel.transport.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        sid = SID if self.mode == "ok" else NEW_SID
        request.setHeader(
            b"Set-Cookie",
            f"APPSESSION={sid}!{self.name}!{self.peer}; Path=/; HttpOnly; SameSite=Lax".encode(),
        )
        return b"from " + self.name.encode()


class TrackingSite(Site):
    """
    A site that can be killed: stops listening and drops every connection.
    """

    def __init__(self, resource):
        super().__init__(resource)
        self.protocols = set()
        self.port = None

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        self.protocols.add(proto)
        original = proto.connectionLost

        def lost(reason, proto=proto, original=original):
            self.protocols.discard(proto)
            return original(reason)

        proto.connectionLost = lost
        return proto

    def listen(self, port: int) -> None:
        self.port = reactor.listenTCP(port, self, interface="127.0.0.1")

    @defer.inlineCallbacks
    def kill(self):
        if self.port is not None:
            port, self.port = self.port, None
            yield port.stopListening()
        for proto in list(self.protocols):
            channel = getattr(proto, "_channel", proto)
            if channel.transport is not None:
                channel.transport.abortConnection()
        yield wait_for(lambda: not self.protocols, 3.0)


@defer.inlineCallbacks
def wait_for(predicate, timeout: float):
    """
    Until C{predicate()} is true, checking every 20 ms; fails after C{timeout}.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        yield deferLater(reactor, 0.02, lambda: None)


class Collect(Protocol):
    """
    Sends bytes, collects everything until the connection closes.
    """

    def __init__(self, data: bytes):
        self.data = data
        self.received = b""
        self.closed = defer.Deferred()

    def connectionMade(self):
        if self.data:
            self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


@defer.inlineCallbacks
def raw(port: int, data: bytes, tls=None, timeout: float = 5.0):
    """
    Send C{data} to the balancer and return all it sends back before closing.
    """
    if tls is None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    else:
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, tls)
    proto = Collect(data)
    yield connectProtocol(endpoint, proto)
    timer = reactor.callLater(timeout, proto.transport.abortConnection)
    received = yield proto.closed
    if timer.active():
        timer.cancel()
    return received


def parse(response: bytes):
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if lines[0].startswith(b"HTTP/1.") else None
    headers: Dict[bytes, List[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


def get(path: bytes = b"/", cookie: Optional[str] = None, method: bytes = b"GET", body: bytes = b"", extra: bytes = b"") -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: app.test", b"Connection: close"]
    if cookie:
        lines.append(b"Cookie: APPSESSION=" + cookie.encode())
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n" + body


def make_certificate(directory: str) -> Tuple[str, str, bytes]:
    """
    A self-signed certificate for localhost and 127.0.0.1, written as PEM.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path = os.path.join(directory, "lb.pem")
    key_path = os.path.join(directory, "lb.key")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path, cert_pem


class Cluster:
    """
    Stand-ins s1..sN (s1 <-> s2 and s3 -> s1 as peers) and a balancer in
    front of them.
    """

    def __init__(self, test: TestCase, count: int = 2, dead: Tuple[str, ...] = (), **balancer):
        self.test = test
        names = [f"s{i}" for i in range(1, count + 1)]
        self.sites: Dict[str, TrackingSite] = {}
        self.standins: Dict[str, StandIn] = {}
        self.ports: Dict[str, int] = {}
        nodes = []
        for i, name in enumerate(names):
            peer = names[(i + 1) % count] if count > 1 else ""
            standin = StandIn(name, peer)
            site = TrackingSite(standin)
            self.ports[name] = port = free_port()
            if name not in dead:
                site.listen(port)
            self.standins[name] = standin
            self.sites[name] = site
            test.addCleanup(site.kill)
            nodes.append(
                NodeConfig(name, Address("127.0.0.1", port), Address("127.0.0.1", free_port()), f"m{i}", "r1")
            )
        balancer.setdefault("health_interval", 0.1)
        balancer.setdefault("health_fall", 1)
        balancer.setdefault("health_rise", 2)
        balancer.setdefault("down_time", 0.5)
        self.start_balancer(tuple(nodes), balancer)

    def start_balancer(self, nodes: Tuple[NodeConfig, ...], balancer) -> None:
        """
        The balancer in front of the stand-ins: a service in this process.
        """
        test = self.test
        self.config = BalancerConfig(name="lb", listen=Address("127.0.0.1", 0), **balancer)
        self.cluster = ClusterConfig(
            "<test>", ClusterSettings("app.test", "secret-secret"), None, (self.config,), nodes, ()
        )
        self.service = BalancerService(reactor, self.cluster, self.config)
        self.service.startService()
        test.addCleanup(self.service.stopService)
        hosts = self.service.addresses()
        self.port = hosts[0].port
        self.https_port = hosts[1].port if len(hosts) > 1 else None

    def seen(self, name: str) -> List:
        return self.standins[name].requests


class PluginModeTests(TestCase):
    timeout = 20
    make = Cluster

    @defer.inlineCallbacks
    def test_routes_to_primary(self):
        """Plugin mode sends a request to the server its cookie names as primary."""
        c = self.make(self, 3)
        for primary in ("s2", "s3", "s1"):
            status, headers, body = parse((yield raw(c.port, get(cookie=f"{SID}!{primary}!s1"))))
            self.assertEqual((status, body), (200, b"from " + primary.encode()))
        self.assertEqual(len(c.seen("s2")), 1)
        self.assertEqual(headers[b"set-cookie"], [b"APPSESSION=" + SID.encode() + b"!s1!s2; Path=/; HttpOnly; SameSite=Lax"])

    @defer.inlineCallbacks
    def test_refusing_primary_falls_back(self):
        """A primary that refuses connections sends the request to the secondary."""
        c = self.make(self, 2, dead=("s1",))
        status, headers, body = parse((yield raw(c.port, get(cookie=f"{SID}!s1!s2", method=b"POST", body=b"x=1"))))
        self.assertEqual((status, body), (200, b"from s2"))
        self.assertEqual(c.seen("s2")[0][3], b"x=1")

    @defer.inlineCallbacks
    def test_no_cookie_placed_by_policy(self):
        """Without a cookie, round robin spreads requests over the servers."""
        c = self.make(self, 2)
        bodies = set()
        for _ in range(4):
            bodies.add(parse((yield raw(c.port, get())))[2])
        self.assertEqual(bodies, {b"from s1", b"from s2"})

    @defer.inlineCallbacks
    def test_bad_cookie_is_no_cookie(self):
        """A malformed cookie or one naming unknown servers is placed by policy."""
        c = self.make(self, 2)
        for cookie in ("garbage", f"{SID}!nobody!", "!!!!", "x" * 300):
            status, _, body = parse((yield raw(c.port, get(cookie=cookie))))
            self.assertEqual(status, 200)
            self.assertIn(body, (b"from s1", b"from s2"))

    @defer.inlineCallbacks
    def test_post_not_retried_when_server_dies(self):
        """A POST whose server dies mid-response gets 502 and is never sent to the other server."""
        c = self.make(self, 2)
        c.standins["s1"].mode = "die"
        status, _, _ = parse((yield raw(c.port, get(cookie=f"{SID}!s1!s2", method=b"POST", body=b"pay=1"))))
        self.assertEqual(status, 502)
        self.assertEqual(len(c.seen("s1")), 1)
        self.assertEqual(c.seen("s2"), [])

    @defer.inlineCallbacks
    def test_get_retried_when_server_dies(self):
        """A GET whose server dies mid-response is retried on the secondary."""
        c = self.make(self, 2)
        c.standins["s1"].mode = "die"
        status, _, body = parse((yield raw(c.port, get(cookie=f"{SID}!s1!s2"))))
        self.assertEqual((status, body), (200, b"from s2"))
        self.assertEqual(len(c.seen("s1")), 1)

    @defer.inlineCallbacks
    def test_server_comes_back(self):
        """A server found down by health checks rejoins after health_rise passes."""
        c = self.make(self, 2)
        yield c.sites["s1"].kill()
        yield wait_for(lambda: not c.service.balancer.nodes["s1"].up, 5.0)
        status, _, body = parse((yield raw(c.port, get(cookie=f"{SID}!s1!s2"))))
        self.assertEqual(body, b"from s2")
        c.sites["s1"].listen(c.ports["s1"])
        yield wait_for(lambda: c.service.balancer.nodes["s1"].up, 5.0)
        yield wait_for(lambda: c.service.balancer.nodes["s1"].available(reactor.seconds()), 5.0)
        status, _, body = parse((yield raw(c.port, get(cookie=f"{SID}!s1!s2"))))
        self.assertEqual(body, b"from s1")

    @defer.inlineCallbacks
    def test_fail_open(self):
        """With every server marked down the balancer still tries them."""
        c = self.make(self, 2)
        for name in ("s1", "s2"):
            c.service.balancer.nodes[name].up = False
        c.service._health.stop()
        status, _, body = parse((yield raw(c.port, get(cookie=f"{SID}!s2!s1"))))
        self.assertEqual((status, body), (200, b"from s2"))

    @defer.inlineCallbacks
    def test_keep_alive(self):
        """Several requests on one client connection are all answered, in order."""
        c = self.make(self, 2)
        one = get(b"/1", cookie=f"{SID}!s1!s2").replace(b"Connection: close\r\n", b"")
        two = get(b"/2", cookie=f"{SID}!s2!s1")
        received = yield raw(c.port, one + two)
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 2)
        self.assertLess(received.index(b"from s1"), received.index(b"from s2"))
        self.assertEqual([r[1] for r in c.seen("s1")], [b"/1"])

    @defer.inlineCallbacks
    def test_lb_health(self):
        """/_appliance/lb-health is answered by the balancer itself."""
        c = self.make(self, 1)
        status, _, body = parse((yield raw(c.port, get(b"/_appliance/lb-health"))))
        self.assertEqual((status, body), (200, b"ok\n"))
        self.assertEqual(c.seen("s1"), [])


class StickyModeTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_learns_and_fails_over(self):
        """Sticky mode keeps a learned cookie on its server and learns again after failover."""
        c = Cluster(self, 3, mode="sticky")
        status, headers, body = parse((yield raw(c.port, get())))
        first = body.decode().split()[-1]
        cookie = headers[b"set-cookie"][0].split(b";")[0].split(b"=", 1)[1].decode()
        for _ in range(4):
            self.assertEqual(parse((yield raw(c.port, get(cookie=cookie))))[2], body)
        yield c.sites[first].kill()
        for name in c.standins:
            c.standins[name].mode = "new"
        status, headers, body = parse((yield raw(c.port, get(cookie=cookie))))
        second = body.decode().split()[-1]
        self.assertEqual(status, 200)
        self.assertNotEqual(second, first)
        new_cookie = headers[b"set-cookie"][0].split(b";")[0].split(b"=", 1)[1].decode()
        for _ in range(4):
            self.assertEqual(parse((yield raw(c.port, get(cookie=new_cookie))))[2], body)

    @defer.inlineCallbacks
    def test_ignores_secondary(self):
        """Sticky mode knows nothing of the cookie's secondary: unknown values go by policy."""
        c = Cluster(self, 3, mode="sticky")
        bodies = set()
        for _ in range(3):
            bodies.add(parse((yield raw(c.port, get(cookie=f"{SID}!s3!s1"))))[2])
        self.assertEqual(len(bodies), 3)


class LimitTests(TestCase):
    timeout = 20
    # The cluster these tests run against (test_balancer_processes runs
    # them unchanged against a balancer of several processes).
    make = Cluster

    @defer.inlineCallbacks
    def test_header_too_large(self):
        """A request head over max_header_bytes gets 431."""
        c = self.make(self, 1, max_header_bytes=2048)
        status, _, _ = parse((yield raw(c.port, get(extra=b"X-Big: " + b"a" * 4000 + b"\r\n"))))
        self.assertEqual(status, 431)

    @defer.inlineCallbacks
    def test_too_many_headers(self):
        """More header lines than max_headers get 431."""
        c = self.make(self, 1, max_headers=20)
        status, _, _ = parse((yield raw(c.port, get(extra=b"".join(b"X-%d: 1\r\n" % i for i in range(30))))))
        self.assertEqual(status, 431)

    @defer.inlineCallbacks
    def test_body_too_large(self):
        """A body over max_body_bytes gets 413 and never reaches a server."""
        c = self.make(self, 1, max_body_bytes=1000)
        status, _, _ = parse((yield raw(c.port, get(method=b"POST", body=b"a" * 2000))))
        self.assertEqual(status, 413)
        self.assertEqual(c.seen("s1"), [])

    @defer.inlineCallbacks
    def test_malformed(self):
        """A malformed request line, or Content-Length with Transfer-Encoding, gets 400."""
        c = self.make(self, 1)
        status, _, _ = parse((yield raw(c.port, b"NONSENSE\r\n\r\n")))
        self.assertEqual(status, 400)
        smuggle = get(method=b"POST", body=b"0\r\n\r\n", extra=b"Transfer-Encoding: chunked\r\n")
        status, _, _ = parse((yield raw(c.port, smuggle)))
        self.assertEqual(status, 400)
        self.assertEqual(c.seen("s1"), [])

    @defer.inlineCallbacks
    def test_slow_head(self):
        """A client that does not finish its head within head_timeout gets 408 and is dropped."""
        c = self.make(self, 1, head_timeout=0.3)
        started = reactor.seconds()
        status, _, _ = parse((yield raw(c.port, b"GET / HTTP/1.1\r\nHost: x\r\n")))
        self.assertEqual(status, 408)
        self.assertLess(reactor.seconds() - started, 3.0)

    @defer.inlineCallbacks
    def test_hop_by_hop(self):
        """Hop-by-hop headers are not forwarded; X-Forwarded-For, X-Forwarded-Proto and Forwarded are added."""
        c = self.make(self, 1)
        extra = (
            b"Connection: X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
            b"Upgrade: websocket\r\nProxy-Authorization: Basic eA==\r\nX-Forwarded-For: 192.0.2.1\r\n"
            b"X-End-To-End: kept\r\n"
        )
        status, _, _ = parse((yield raw(c.port, get(extra=extra))))
        self.assertEqual(status, 200)
        headers = c.seen("s1")[0][2]
        for name in (b"connection", b"x-private", b"keep-alive", b"te", b"upgrade", b"proxy-authorization"):
            self.assertNotIn(name, headers)
        self.assertEqual(headers[b"x-end-to-end"], [b"kept"])
        self.assertEqual(headers[b"x-forwarded-for"], [b"192.0.2.1, 127.0.0.1"])
        self.assertEqual(headers[b"x-forwarded-proto"], [b"http"])
        self.assertEqual(headers[b"forwarded"], [b"for=127.0.0.1;proto=http"])

    @defer.inlineCallbacks
    def test_large_response(self):
        """A large response is relayed whole (with flow control toward the client)."""
        c = self.make(self, 1)
        status, headers, body = parse((yield raw(c.port, get(b"/big"), timeout=10.0)))
        self.assertEqual(status, 200)
        self.assertEqual(body, BIG)

    @defer.inlineCallbacks
    def test_chunked_response(self):
        """A chunked response is relayed chunked to the end, and the connection reused after."""
        c = self.make(self, 1)
        one = get(b"/chunked").replace(b"Connection: close\r\n", b"")
        received = yield raw(c.port, one + get(b"/after"))
        self.assertIn(b"Transfer-Encoding: chunked", received)
        self.assertIn(b"piece 49;", received)
        self.assertTrue(received.endswith(b"from s1"))

    @defer.inlineCallbacks
    def test_large_body_streamed(self):
        """A body larger than retry_body_bytes is streamed through whole."""
        c = self.make(self, 1, retry_body_bytes=1024)
        body = os.urandom(300_000)
        status, _, _ = parse((yield raw(c.port, get(method=b"POST", body=body), timeout=10.0)))
        self.assertEqual(status, 200)
        self.assertEqual(c.seen("s1")[0][3], body)


class HttpsTests(TestCase):
    timeout = 20
    skip = SKIP_TLS_ON_PYPY

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, directory, True)
        self.cert, self.key, self.pem = make_certificate(directory)

    def client_tls(self):
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        return optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(self.pem))

    def cluster(self, **kw):
        return Cluster(
            self, 1, https=Address("127.0.0.1", 0), tls_cert=self.cert, tls_key=self.key, **kw
        )

    @defer.inlineCallbacks
    def test_https(self):
        """HTTPS is served with the configured certificate; the session cookie gets Secure."""
        c = self.cluster()
        status, headers, body = parse((yield raw(c.https_port, get(), tls=self.client_tls())))
        self.assertEqual((status, body), (200, b"from s1"))
        self.assertTrue(headers[b"set-cookie"][0].endswith(b"; Secure"))
        self.assertEqual(c.seen("s1")[0][2][b"x-forwarded-proto"], [b"https"])

    @defer.inlineCallbacks
    def test_plain_cookie_not_secure(self):
        """Over plain HTTP the session cookie is relayed unchanged."""
        c = self.cluster()
        status, headers, _ = parse((yield raw(c.port, get())))
        self.assertNotIn(b"Secure", headers[b"set-cookie"][0])

    @defer.inlineCallbacks
    def test_redirect(self):
        """With redirect_https, plain HTTP is answered with a redirect to the HTTPS port."""
        c = self.cluster(redirect_https=True)
        status, headers, _ = parse((yield raw(c.port, get(b"/cart?x=1"))))
        self.assertEqual(status, 301)
        self.assertEqual(headers[b"location"], [b"https://app.test:%d/cart?x=1" % c.https_port])
        self.assertEqual(c.seen("s1"), [])

    @defer.inlineCallbacks
    def test_old_tls_refused(self):
        """A client offering only TLS 1.1 cannot connect."""
        from twisted.internet.ssl import CertificateOptions, TLSVersion

        old = CertificateOptions(
            verify=False,
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_0,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_1,
        )
        c = self.cluster()
        received = yield raw(c.https_port, get(), tls=old)
        self.assertEqual(received, b"")
        self.assertEqual(c.seen("s1"), [])
