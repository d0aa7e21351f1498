"""
The client library in memory: real Client objects talking PB over iosim to
the client gates of the simulated cluster's real nodes.  Failover to the
secondary, the health view (a node seen failing is not dialled), and
exactly once when the primary dies after committing a call but before
its answer left.
"""

from __future__ import annotations

from typing import Dict, List

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from appliance.client import Client, LoginRefused, UnknownSession
from appliance.config import ServiceConfig
from appliance.core import calls
from appliance.core.session import decode_value
from appliance.replication import clientgate, guard
from appliance.server.services import Services, SessionCalls

from .sim import Sim

CART = ServiceConfig("cart", "appliance.demo.cart:Cart", ("items",))


class Harness:
    """
    The simulated cluster with a client gate per node, reached by port
    number (s1 = 1, ...), and the client's own clock.
    """

    def __init__(self):
        self.sim = Sim()
        self.clock = Clock()
        ids = self.sim.config.node_ids
        names = sorted(self.sim.servers)
        self.port_of = {name: i + 1 for i, name in enumerate(names)}
        directory = {name: [ids[name], "127.0.0.1", self.port_of[name]] for name in names}
        self.gates = {}
        for name in names:
            server = self.sim.servers[name]
            realm = clientgate.ClientRealm(name, SessionCalls(server.node, Services((CART,)), ids), directory)
            self.gates[name] = guard.GuardedServerFactory(
                realm, [clientgate.ClientChecker({"shop": "shop-password"})], server.clock, 5.0
            )
        self.pumps: Dict[str, List] = {name: [] for name in names}
        self.dials: List[str] = []

    def connect(self, port, factory):
        name = next(n for n, p in self.port_of.items() if p == port)
        self.dials.append(name)
        if name in self.sim.down:
            return defer.fail(error.ConnectionRefusedError())
        client, _, pump = connectedServerAndClient(
            lambda: self.gates[name].buildProtocol(None), lambda: factory.buildProtocol(None)
        )
        self.pumps[name].append((client, pump))
        return defer.succeed(client)

    def flush(self):
        for pairs in self.pumps.values():
            for _, pump in pairs:
                pump.flush()

    def wait(self, d, limit=200):
        box = []
        d.addBoth(box.append)
        for _ in range(limit):
            self.flush()
            if box:
                break
            self.sim.run(self.sim.settings.heartbeat_interval)
            self.clock.advance(self.sim.settings.heartbeat_interval)
        assert box, "no answer"
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]

    def kill(self, name):
        """
        kill -9 of C{name}: its process is gone and the client's
        connections to it break, with nothing more delivered.
        """
        self.sim.kill(name)
        pairs, self.pumps[name] = self.pumps[name], []
        for client, _ in pairs:
            client.connectionLost(Failure(error.ConnectionLost()))


class MemoryClient(Client):
    def __init__(self, harness: Harness, password="shop-password", **kwargs):
        super().__init__(harness.clock, [("127.0.0.1", 1)], "shop", password, **kwargs)
        self.harness = harness

    def _connect(self, host, port, factory):
        return self.harness.connect(port, factory)


class ClientTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.client = MemoryClient(self.h)
        self.h.wait(self.client.connect())

    def test_learns_every_node(self):
        """At login the client learns every node's number and address."""
        self.assertEqual(sorted(self.client.nodes), ["s1", "s2", "s3"])
        self.assertEqual(self.client.ids, self.h.sim.config.node_ids)

    def test_wrong_password(self):
        """A wrong password fails the connect with LoginRefused."""
        other = MemoryClient(self.h, password="wrong-password")
        self.assertRaises(LoginRefused, self.h.wait, other.connect())

    def test_reply_names_the_pair(self):
        """The client learns primary and secondary from the summed identity of each answer."""
        session = self.h.wait(self.client.open())
        stored = self.h.sim.servers["s1"].node.store.get(session.sid)
        self.assertEqual((session.primary, session.secondary), ("s1", stored.secondary))
        self.assertEqual(session.handle, f"{session.sid}!s1!{stored.secondary}")

    def test_failover_to_the_secondary(self):
        """When the primary dies the next call goes to the secondary, which serves the whole cart."""
        session = self.h.wait(self.client.open())
        secondary = session.secondary
        self.assertEqual(self.h.wait(session.call("cart", "add", "apple")), 1)
        self.h.kill("s1")
        self.assertEqual(self.h.wait(session.call("cart", "add", "pear")), 2)
        self.assertEqual(session.primary, secondary)
        self.assertEqual(self.h.wait(session.call("cart", "items")), ["apple", "pear"])

    def test_node_seen_down_is_not_dialled(self):
        """A node whose connection broke is not dialled again within down_time, then it is."""
        session = self.h.wait(self.client.open())
        self.h.kill("s1")
        self.h.wait(session.call("cart", "add", "pear"))
        dials = len(self.h.dials)
        self.h.wait(self.client.open())
        self.assertNotIn("s1", self.h.dials[dials:])
        self.assertTrue(self.client.is_down("s1"))
        self.h.clock.advance(self.client.down_time)
        self.assertFalse(self.client.is_down("s1"))
        self.assertEqual(self.client.candidates(None, None)[0], "s1")

    def test_answer_lost_after_commit_is_replayed(self):
        """The primary dies after committing a call, before its answer leaves: the retry replays the record."""
        session = self.h.wait(self.client.open())
        secondary = session.secondary
        d = session.call("cart", "add", "apple")
        box = []
        d.addBoth(lambda result: box.append(result) or result)
        for _, pump in self.h.pumps["s1"]:
            pump.pump()
        backup = self.h.sim.servers[secondary].node.store
        for _ in range(40):
            if "cart" in backup.get(session.sid).values:
                break
            self.h.sim.run(self.h.sim.settings.heartbeat_interval)
        self.assertEqual(decode_value(backup.get(session.sid).values["cart"]), ["apple"])
        self.assertEqual(box, [])
        self.h.kill("s1")
        self.assertEqual(self.h.wait(d), 1)
        self.assertEqual(self.h.wait(session.call("cart", "items")), ["apple"])
        promoted = self.h.sim.servers[secondary].node.store.get(session.sid)
        self.assertEqual(sum(1 for k in promoted.values if k.startswith(calls.CALLS)), 1)

    def test_attach_by_handle(self):
        """A handle reattaches to the session; another client cannot use it."""
        session = self.h.wait(self.client.open())
        self.h.wait(session.call("cart", "add", "apple"))
        again = self.client.attach(session.handle)
        self.assertEqual(self.h.wait(again.call("cart", "items")), ["apple"])
        self.assertRaises(ValueError, self.client.attach, "not a handle")
        self.assertRaises(UnknownSession, self.h.wait, self.client.attach("C" * 22).call("cart", "items"))
