"""
The persistent client against real session server processes on loopback:
its own sessions only, wrong credentials refused, one session from HTTP and
from the client, kill -9 of the primary mid-sequence.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appliance.client import Client, LoginRefused, UnknownSession
from appliance.client.client import resolve

from .helpers import ROOT, RealNodes, free_ports, http, write

CLIENTS = """
[client:shop]
password = shop-password

[client:other]
password = other-password

[service:cart]
object = appliance.demo.cart:Cart
idempotent = items
"""


class ClientNodes(RealNodes):
    """
    Real session servers with client ports, credentials and the cart service.
    """

    def __init__(self, case, names=("s1", "s2", "s3"), replication="sync", balancer=None, dns=None):
        self.client_ports = dict(zip(names, free_ports(len(names))))
        super().__init__(case, names, replication, balancer=balancer, dns=dns, apps=CLIENTS)

    def start(self, name, roles="server"):
        if "client = " not in self.text:
            for node, port in self.client_ports.items():
                self.text = re.sub(
                    rf"(\[node:{node}\]\n(?:.+\n)*?rack = \S+\n)", rf"\1client = 127.0.0.1:{port}\n", self.text
                )
            write(self.config, self.text)
        return super().start(name, roles)

    def client(self, case, user="shop", password="shop-password", seeds=None, **kwargs) -> Client:
        addresses = [("127.0.0.1", self.client_ports[n]) for n in (seeds or sorted(self.client_ports))]
        client = Client(reactor, addresses, user, password, **kwargs)
        case.addCleanup(client.close)
        return client


class ClientEndToEndTests(TestCase):
    timeout = 120

    def setUp(self):
        self.nodes = ClientNodes(self)

    @defer.inlineCallbacks
    def test_open_call_and_plain_operations(self):
        """A new session takes set/get/keys/delete and cart calls, and names its primary and secondary."""
        client = yield self.nodes.client(self).connect()
        self.assertEqual(sorted(client.nodes), ["s1", "s2", "s3"])
        session = yield client.open()
        self.assertIn(session.primary, client.nodes)
        self.assertIn(session.secondary, client.nodes)
        self.assertNotEqual(session.primary, session.secondary)
        yield session.set("name", {"first": "Ada"})
        self.assertEqual((yield session.get("name")), {"first": "Ada"})
        self.assertEqual((yield session.call("cart", "add", "apple")), 1)
        self.assertEqual((yield session.call("cart", "add", "pear")), 2)
        self.assertEqual((yield session.call("cart", "items")), ["apple", "pear"])
        self.assertEqual((yield session.keys()), ["cart", "name"])
        self.assertTrue((yield session.delete("name")))
        self.assertEqual((yield session.keys()), ["cart"])

    @defer.inlineCallbacks
    def test_wrong_password_refused(self):
        """A wrong password and an unknown client name are refused at login."""
        yield self.assertFailure(self.nodes.client(self, password="not-the-password").connect(), LoginRefused)
        yield self.assertFailure(self.nodes.client(self, user="nobody").connect(), LoginRefused)
        yield self.assertFailure(self.nodes.client(self, user="s1", password="test-secret-123").connect(), LoginRefused)

    @defer.inlineCallbacks
    def test_only_own_sessions(self):
        """Another client's session answers exactly as an unknown one does."""
        shop = yield self.nodes.client(self).connect()
        other = yield self.nodes.client(self, user="other", password="other-password").connect()
        session = yield shop.open()
        yield session.call("cart", "add", "apple")
        stolen = other.attach(session.handle)
        foreign = yield self.assertFailure(stolen.call("cart", "items"), UnknownSession)
        unknown = yield self.assertFailure(other.attach("A" * 22).call("cart", "items"), UnknownSession)
        self.assertEqual(str(foreign).replace(session.sid, "X"), str(unknown).replace("A" * 22, "X"))
        self.assertEqual((yield session.call("cart", "items")), ["apple"])

    @defer.inlineCallbacks
    def test_same_session_from_http(self):
        """A session filled by the client is the cart HTTP sees, and HTTP's additions reach the client."""
        client = yield self.nodes.client(self).connect()
        session = yield client.open()
        yield session.call("cart", "add", "apple")
        url = self.nodes.url(session.primary, "/cart")
        cookie = f"APPSESSION={session.handle}"
        status, _, body = yield threads.deferToThread(http, "GET", url, cookie=cookie)
        self.assertEqual((status, body), (200, b'{"items": ["apple"]}'))
        status, headers, _ = yield threads.deferToThread(http, "POST", url + "/items", {"item": "pear"}, cookie)
        self.assertEqual(status, 200)
        self.assertEqual((yield session.call("cart", "items")), ["apple", "pear"])

    @defer.inlineCallbacks
    def test_kill_primary_mid_sequence(self):
        """kill -9 of the primary mid-sequence: the client follows to the secondary and every add is there once."""
        client = yield self.nodes.client(self).connect()
        session = yield client.open()
        acknowledged = []
        for i in range(10):
            acknowledged.append((yield session.call("cart", "add", f"item-{i}")))
        primary, secondary = session.primary, session.secondary
        self.nodes.kill(primary)
        for i in range(10, 20):
            acknowledged.append((yield session.call("cart", "add", f"item-{i}")))
        self.assertEqual(acknowledged, list(range(1, 21)))
        self.assertEqual(session.primary, secondary)
        self.assertNotIn(session.secondary, (None, primary))
        self.assertEqual((yield session.call("cart", "items")), [f"item-{i}" for i in range(20)])
        self.assertTrue(client.is_down(primary))


    @defer.inlineCallbacks
    def test_drained_primary(self):
        """SIGTERM drains the primary: the client's calls follow the session to the node it was handed to."""
        client = yield self.nodes.client(self).connect()
        session = yield client.open()
        for i in range(5):
            yield session.call("cart", "add", f"item-{i}")
        primary = session.primary
        proc = self.nodes.procs[primary]
        proc.terminate()
        i = 5
        while proc.poll() is None or i < 10:
            self.assertLess(i, 2000, "the drained node never exited")
            yield session.call("cart", "add", f"item-{i}")
            i += 1
        yield session.call("cart", "add", f"item-{i}")
        self.assertNotEqual(session.primary, primary)
        self.assertEqual((yield session.call("cart", "items")), [f"item-{n}" for n in range(i + 1)])

class DnsTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_connect_by_cluster_name(self):
        """The client finds the cluster's hosts through our responder and logs in on them."""
        lb, dns_port = free_ports(2)
        nodes = ClientNodes(
            self,
            balancer=f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nnode = s1\n",
            dns=f"\n[dns]\nlisten = 127.0.0.1:{dns_port}\nnode = s1\ncheck_interval = 250ms\n",
        )
        nodes.start("s1", roles="dns,balancer")
        port = nodes.client_ports["s2"]
        seeds = None
        for _ in range(100):
            try:
                seeds = yield resolve(reactor, "app.cluster.test", port, ("127.0.0.1", dns_port), timeout=1.0)
                break
            except Exception:
                yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(seeds, [("127.0.0.1", port)])
        client = Client(reactor, seeds, "shop", "shop-password")
        self.addCleanup(client.close)
        yield client.connect()
        session = yield client.open()
        self.assertEqual(session.primary, "s2")


BLOCKING = """
import json, sys
from appliance.client import LoginRefused
from appliance.client.blocking import BlockingClient
seeds = sys.argv[1].split(",")
out = {}
try:
    BlockingClient(seeds, "shop", "wrong-password", timeout=5, failover_time=5)
except LoginRefused as e:
    out["refused"] = type(e).__name__
with BlockingClient(seeds, "shop", "shop-password", timeout=5, failover_time=20) as client:
    cart = client.open()
    out["adds"] = [cart.call("cart", "add", "apple"), cart.call("cart", "add", "pear")]
    cart.set("note", "hi")
    again = client.attach(cart.handle)
    out["items"] = again.call("cart", "items")
    out["keys"] = again.keys()
    out["ended"] = again.end()
    try:
        again.get("note")
    except Exception as e:
        out["after_end"] = type(e).__name__
print(json.dumps(out))
"""


class BlockingClientTests(SynchronousTestCase):
    def test_blocking_script(self):
        """A plain script uses the blocking client with 'with': calls, attach by handle, end, clear errors."""
        nodes = ClientNodes(self)
        seeds = ",".join(f"127.0.0.1:{p}" for p in nodes.client_ports.values())
        proc = subprocess.run(
            [sys.executable, "-c", BLOCKING, seeds], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(
            json.loads(proc.stdout),
            {
                "refused": "LoginRefused",
                "adds": [1, 2],
                "items": ["apple", "pear"],
                "keys": ["cart", "note"],
                "ended": True,
                "after_end": "UnknownSession",
            },
        )
