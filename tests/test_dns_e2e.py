"""
End to end: the responder as a real child process (C{python -m
appliance.dns.service}) in front of real stand-in balancers, queried with
dnspython (UDP and TCP) and dig.

The stand-in balancers are twisted.web servers in this process answering
C{GET /_appliance/lb-health} on 127.0.0.1, 127.0.0.2 and [::1]; stopping and
restarting one of them must take it out of and back into the answers within
the check interval.  dig and dnspython are required: their absence fails the
tests, it never skips them.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from appliance.dns.health import check_timeout

from tests.test_dns_support import MALFORMED, pointer_chain_query

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "app.e2e.test"
CHECK_INTERVAL = 0.5
#: A balancer must leave (or return) within one interval; this covers the
#: check itself and the polling granularity on a loaded machine.
SLACK = 0.5


def free_port(host: str = "127.0.0.1") -> int:
    """
    A port free for TCP and UDP on C{host}.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port


class _Health(Resource):
    """
    The health URL; C{mode} makes it answer 200 ("ok"), 503 ("sick") or
    never ("hang").
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.mode = "ok"
        self.hung: List = []

    def render_GET(self, request):
        if request.path != b"/_appliance/lb-health":
            request.setResponseCode(404)
            return b""
        if self.mode == "hang":
            self.hung.append(request)
            return NOT_DONE_YET
        if self.mode == "sick":
            request.setResponseCode(503)
        return b"ok"

    def release(self) -> None:
        hung, self.hung = self.hung, []
        for request in hung:
            request.transport.abortConnection()


class StandInBalancer:
    """
    A tiny HTTP server that answers the health URL; can stop and start again
    on the same address.
    """

    def __init__(self, name: str, host: str):
        self.name = name
        self.host = host
        self.port_number = free_port(host)
        self.port = None
        self.health = _Health()

    def start(self) -> None:
        site = Site(self.health)
        site.noisy = False
        self.port = reactor.listenTCP(self.port_number, site, interface=self.host)

    def stop(self) -> defer.Deferred:
        self.health.release()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port_number}" if ":" in self.host else f"{self.host}:{self.port_number}"


class ResponderProcess(protocol.ProcessProtocol):
    """
    The child responder: fires C{ready} on its "ready" line and C{ended}
    when it exits; keeps stderr for failure messages.
    """

    def __init__(self):
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.stdout = b""
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        if b"ready" in self.stdout and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("responder exited:\n" + self.stderr.decode(errors="replace")))
        self.ended.callback(None)


def write_config(
    directory: str, dns_port: int, balancers: List[Tuple[str, str]], rrl_rate: int = 100000
) -> str:
    """
    A cluster config for the child: C{balancers} are (name, listen) pairs.
    """
    lines = [
        "[cluster]",
        f"name = {NAME}",
        "secret = e2e-secret",
        "[dns]",
        f"listen = 127.0.0.1:{dns_port}",
        "ttl = 3",
        f"check_interval = {int(CHECK_INTERVAL * 1000)}ms",
        f"rrl_rate = {rrl_rate}",
        "rrl_slip = 2",
    ]
    for name, listen in balancers:
        lines += [f"[balancer:{name}]", f"listen = {listen}"]
    lines += ["[node:s1]", "http = 127.0.0.1:1", "replication = 127.0.0.1:2", "machine = m", "rack = r"]
    path = os.path.join(directory, "cluster.ini")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class ResponderMixin:
    """
    Start the responder child from a config and stop it in cleanup.
    """

    def start_responder(self, balancers: List[Tuple[str, str]], **options) -> defer.Deferred:
        if shutil.which("dig") is None:
            self.fail("dig is not installed (apt-get install dnsutils): required, not skipped")
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        self.dns_port = free_port()
        config = write_config(tmp, self.dns_port, balancers, **options)
        self.child = ResponderProcess()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        transport = reactor.spawnProcess(
            self.child,
            sys.executable,
            [sys.executable, "-m", "appliance.dns.service", config],
            env=env,
            path=ROOT,
        )
        self.addCleanup(self._stop_child, transport)
        return self.child.ready

    def _stop_child(self, transport) -> defer.Deferred:
        if not self.child.ended.called:
            transport.signalProcess("TERM")
        return self.child.ended

    @defer.inlineCallbacks
    def dig(self, *args: str) -> defer.Deferred:
        out, err, code = yield getProcessOutputAndValue(
            shutil.which("dig"),
            ["-p", str(self.dns_port), "@127.0.0.1", "+time=2", "+tries=1", *args],
            env=os.environ,
        )
        self.assertEqual(code, 0, err)
        return out.decode()


class EndToEndTests(ResponderMixin, TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.balancers: Dict[str, StandInBalancer] = {
            "lb1": StandInBalancer("lb1", "127.0.0.1"),
            "lb2": StandInBalancer("lb2", "127.0.0.2"),
            "lb3": StandInBalancer("lb3", "::1"),
        }
        for b in self.balancers.values():
            b.start()
            self.addCleanup(b.stop)
        yield self.start_responder([(b.name, b.listen) for b in self.balancers.values()])
        # Answers are complete from the start (all balancers count as live
        # until checked); let the first round finish all the same.
        yield self.wait_for(lambda: len(self.a_records()) == 2, "first answers")

    def resolver(self, tcp: bool = False) -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.dns_port
        r.lifetime = 2.0
        r.cache = None
        return r

    def a_records(self, tcp: bool = False) -> List[str]:
        answer = self.resolver().resolve(NAME, "A", tcp=tcp)
        self.assertTrue(answer.response.flags & dns.flags.AA)
        return [r.address for r in answer]

    @defer.inlineCallbacks
    def wait_for(self, condition: Callable[[], bool], what: str, within: float = 10.0):
        deadline = time.monotonic() + within
        while True:
            if condition():
                return time.monotonic()
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}; responder stderr:\n"
                          + self.child.stderr.decode(errors="replace")[-3000:])
            yield deferLater(reactor, 0.05, lambda: None)

    def test_udp_and_tcp_answers(self):
        """dnspython gets the live balancers' A and AAAA records over UDP and TCP."""
        self.assertEqual(sorted(self.a_records()), ["127.0.0.1", "127.0.0.2"])
        self.assertEqual(sorted(self.a_records(tcp=True)), ["127.0.0.1", "127.0.0.2"])
        aaaa = self.resolver().resolve(NAME, "AAAA", tcp=True)
        self.assertEqual([r.address for r in aaaa], ["::1"])

    def test_round_robin(self):
        """Successive queries get the records in rotated order."""
        firsts = {self.a_records()[0] for _ in range(4)}
        self.assertEqual(firsts, {"127.0.0.1", "127.0.0.2"})

    def test_srv_and_soa(self):
        """SRV gives the balancer ports under per-balancer names; the apex has SOA."""
        srv = self.resolver().resolve("_http._tcp." + NAME, "SRV")
        got = sorted((r.port, str(r.target)) for r in srv)
        expected = sorted((b.port_number, f"{b.name}.{NAME}.") for b in self.balancers.values())
        self.assertEqual(got, expected)
        soa = self.resolver().resolve(NAME, "SOA")
        self.assertEqual(str(soa[0].mname), f"ns1.{NAME}.")

    def test_nxdomain_and_refused(self):
        """Unknown names in the zone are NXDOMAIN, names outside REFUSED."""
        q = dns.message.make_query("nope." + NAME, "A")
        r = dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=2)
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA)
        q = dns.message.make_query("example.com", "A")
        r = dns.query.tcp(q, "127.0.0.1", port=self.dns_port, timeout=2)
        self.assertEqual(r.rcode(), dns.rcode.REFUSED)

    @defer.inlineCallbacks
    def test_dig(self):
        """dig +short over UDP and TCP lists the live balancers."""
        out = yield self.dig("+short", NAME, "A")
        self.assertEqual(sorted(out.split()), ["127.0.0.1", "127.0.0.2"])
        out = yield self.dig("+short", "+tcp", NAME, "AAAA")
        self.assertEqual(out.split(), ["::1"])
        out = yield self.dig("+short", "_http._tcp." + NAME, "SRV")
        self.assertEqual(len(out.strip().splitlines()), 3)

    @defer.inlineCallbacks
    def test_balancer_leaves_and_returns(self):
        """A stopped balancer leaves the answers within the check interval and comes back."""
        yield self.balancers["lb2"].stop()
        stopped = time.monotonic()
        left = yield self.wait_for(lambda: self.a_records() == ["127.0.0.1"], "lb2 to leave")
        self.assertLess(left - stopped, CHECK_INTERVAL + SLACK)
        self.balancers["lb2"].start()
        started = time.monotonic()
        back = yield self.wait_for(lambda: len(self.a_records()) == 2, "lb2 to return")
        self.assertLess(back - started, CHECK_INTERVAL + SLACK)

    @defer.inlineCallbacks
    def test_hung_or_sick_balancer_leaves(self):
        """A balancer that hangs or answers 503 leaves (within interval + check timeout) and returns."""
        timeout = check_timeout(CHECK_INTERVAL)
        for mode in ("hang", "sick"):
            health = self.balancers["lb1"].health
            health.mode = mode
            changed = time.monotonic()
            left = yield self.wait_for(lambda: self.a_records() == ["127.0.0.2"], f"lb1 {mode}")
            self.assertLess(left - changed, CHECK_INTERVAL + timeout + SLACK, mode)
            health.mode = "ok"
            health.release()
            yield self.wait_for(lambda: len(self.a_records()) == 2, f"lb1 back from {mode}")

    @defer.inlineCallbacks
    def test_fail_open(self):
        """With every balancer down, all of them are answered."""
        for b in self.balancers.values():
            yield b.stop()
        yield deferLater(reactor, CHECK_INTERVAL * 3, lambda: None)
        self.assertEqual(sorted(self.a_records()), ["127.0.0.1", "127.0.0.2"])
        self.assertIn(b"fail open", self.child.stderr)

    @defer.inlineCallbacks
    def test_malformed_then_valid(self):
        """Malformed packets and random bytes over UDP never stop the responder answering."""
        corpus = list(MALFORMED.values()) + [
            pointer_chain_query(5000),
            b"",
            b"\x00",
            b"\xff" * 12,
            b"\x00\x01\x81\x80" + b"\x00" * 8,  # a response: dropped
            b"\x00\x02\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in corpus:
                s.sendto(data, ("127.0.0.1", self.dns_port))

            @settings(max_examples=200, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(st.binary(min_size=0, max_size=700))
            def send(data):
                s.sendto(data, ("127.0.0.1", self.dns_port))

            send()
        q = dns.message.make_query(NAME, "A")
        r = dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=2)
        self.assertEqual(r.id, q.id)
        self.assertEqual(len(r.answer[0]), 2)
        yield deferLater(reactor, 0.2, lambda: None)  # collect the child's stderr
        self.assertNotIn(b"Traceback", self.child.stderr)
        self.assertNotIn(b"Unhandled", self.child.stderr)


class LargeAnswerAndRateLimitTests(ResponderMixin, TestCase):
    """
    A responder with 40 balancers that are all down (so all are answered,
    fail open): the A answer does not fit 512 bytes.  RRL at 2 per second.
    """

    timeout = 60
    COUNT = 40

    def setUp(self):
        balancers = [(f"lb{i}", f"127.0.1.{i}:{free_port()}") for i in range(1, self.COUNT + 1)]
        return self.start_responder(balancers, rrl_rate=2)

    @defer.inlineCallbacks
    def test_truncated_then_tcp(self):
        """Over UDP without EDNS the answer is truncated (TC); TCP brings all of it."""
        out = yield self.dig("+noedns", "+ignore", "+noall", "+comments", NAME, "A")
        self.assertIn(" tc", out.split("flags:")[1].split(";")[0])
        out = yield self.dig("+short", "+tcp", NAME, "A")
        self.assertEqual(len(out.split()), self.COUNT)
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime, r.cache = ["127.0.0.1"], self.dns_port, 3.0, None
        answer = r.resolve(NAME, "A", tcp=True)
        self.assertEqual(len(answer), self.COUNT)

    def test_rate_limited_with_slip(self):
        """A burst over the UDP rate limit is partly dropped, partly answered TC and empty."""
        query = dns.message.make_query(NAME, "SOA")
        replies = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            for i in range(10):
                query.id = i
                s.sendto(query.to_wire(), ("127.0.0.1", self.dns_port))
            try:
                while True:
                    replies.append(dns.message.from_wire(s.recv(4096)))
            except socket.timeout:
                pass
        full = [r for r in replies if not r.flags & dns.flags.TC]
        slipped = [r for r in replies if r.flags & dns.flags.TC]
        self.assertLess(len(replies), 10)
        self.assertGreaterEqual(len(full), 2)
        self.assertLessEqual(len(full), 4)
        self.assertGreaterEqual(len(slipped), 3)
        self.assertTrue(all(not r.answer for r in slipped))
        answer = dns.query.tcp(query, "127.0.0.1", port=self.dns_port, timeout=2)
        self.assertEqual(len(answer.answer), 1)
