"""
The client call path in memory: service calls on the simulated cluster's
real nodes (lock, commit, replication, takeover), call records across a
failover, and the client port's PB gate over iosim.
"""

from __future__ import annotations


from twisted.cred.credentials import UsernamePassword
from twisted.spread import pb
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from appliance.client import errors
from appliance.config import ServiceConfig
from appliance.core import identity
from appliance.core import calls as records
from appliance.core.calls import CallId
from appliance.core.session import decode_value
from appliance.replication import clientgate, guard
from appliance.demo.cart import Cart
from appliance.server.services import Services, SessionCalls

from .sim import Sim

CART = ServiceConfig("cart", "appliance.demo.cart:Cart", ("items",))


class Broken:
    """
    A service whose method changes the session, then raises.
    """

    def __init__(self, session):
        self.session = session

    def spoil(self):
        self.session["cart"] = ["spoiled"]
        raise RuntimeError("out of stock")


def load(path):
    if path == "tests:Broken":
        return Broken
    from appliance.server.hosting import load_object

    return load_object(path)


class CallPathTests(SynchronousTestCase):
    def setUp(self):
        self.sim = Sim(witnesses=("lb1", "lb2", "lb3"))
        self.services = Services((CART, ServiceConfig("broken", "tests:Broken")), load)
        self.ids = self.sim.config.node_ids

    def calls(self, name) -> SessionCalls:
        return SessionCalls(self.sim.servers[name].node, self.services, self.ids)

    def wait(self, d):
        outcome = self.sim.until(d)
        if hasattr(outcome, "raiseException"):
            outcome.raiseException()
        return outcome

    def open(self, name="s1", owner="shop"):
        sid, total = self.wait(self.calls(name).open(owner))
        session = self.sim.servers[name].node.store.get(sid)
        return sid, total, session

    def add(self, name, sid, seq, item="apple", retry=False, owner="shop"):
        return self.wait(self.calls(name).call(owner, sid, CallId("n", seq), retry, "cart", "add", [item]))

    def cart_on(self, name, sid):
        session = self.sim.servers[name].node.store.get(sid)
        return decode_value(session.values["cart"]) if "cart" in session.values else []

    def test_open_answers_the_pair_sum(self):
        """A new session's answer sums its primary's and secondary's numbers."""
        sid, total, session = self.open()
        self.assertEqual(session.primary, "s1")
        self.assertEqual(identity.secondary_of(self.ids, "s1", total), (True, session.secondary))

    def test_call_replicates_with_its_record(self):
        """A non-idempotent call's effect and record reach the secondary in one change."""
        sid, _, session = self.open()
        self.assertEqual(self.add("s1", sid, 1), ("1", identity.pair_sum(self.ids, "s1", session.secondary)))
        backup = self.sim.servers[session.secondary].node.store.get(sid)
        self.assertEqual(backup.version, session.version)
        self.assertEqual(decode_value(backup.values["cart"]), ["apple"])
        self.assertEqual(decode_value(backup.values[records.slot(CallId("n", 1))]), ["n", 1, "1"])

    def test_first_attempt_runs_without_looking(self):
        """A call sent for the first time runs; only a retry is answered from the record."""
        sid, _, _ = self.open()
        self.add("s1", sid, 1)
        self.assertEqual(self.add("s1", sid, 2)[0], "2")

    def test_retry_on_primary_replays(self):
        """A retried call with a recorded id returns the record and does not run again."""
        sid, _, _ = self.open()
        self.add("s1", sid, 1)
        self.assertEqual(self.add("s1", sid, 1, retry=True)[0], "1")
        self.assertEqual(self.cart_on("s1", sid), ["apple"])

    def test_retry_after_failover_replays(self):
        """After kill of the primary, the retry on the secondary returns the recorded result, once."""
        sid, _, session = self.open()
        secondary = session.secondary
        self.add("s1", sid, 1)
        self.sim.kill("s1")
        result, total = self.add(secondary, sid, 1, retry=True)
        self.assertEqual(result, "1")
        self.assertEqual(self.cart_on(secondary, sid), ["apple"])
        promoted = self.sim.servers[secondary].node.store.get(sid)
        self.assertEqual(total, identity.pair_sum(self.ids, secondary, promoted.secondary))
        self.assertEqual(self.add(secondary, sid, 2, item="pear")[0], "2")

    def test_both_copies_lost_is_outcome_unknown(self):
        """A retried non-idempotent call whose session is gone everywhere is OutcomeUnknown; a first try is unknown."""
        self.sim = Sim(witnesses=("lb1", "lb2", "lb3"), extra="reprotect = lazy")
        sid, _, session = self.open()
        secondary = session.secondary
        third = ({"s1", "s2", "s3"} - {"s1", secondary}).pop()
        self.sim.kill(secondary)
        self.sim.kill("s1")
        self.assertIsNone(self.sim.servers[third].node.store.get(sid))
        self.assertRaises(errors.OutcomeUnknown, self.add, third, sid, 1, retry=True)
        self.assertRaises(errors.UnknownSession, self.add, third, sid, 2)

    def test_dropped_record_is_outcome_unknown(self):
        """A retry of a call whose record was overwritten (too old) is OutcomeUnknown."""
        sid, _, _ = self.open()
        for seq in range(1, 40):
            self.add("s1", sid, seq)
        self.assertRaises(errors.OutcomeUnknown, self.add, "s1", sid, 1, retry=True)
        self.assertEqual(len(self.cart_on("s1", sid)), 39)

    def test_other_owner_sees_unknown(self):
        """Another client's session is answered like an unknown one, and is left as it was."""
        sid, _, session = self.open()
        version = session.version
        with self.assertRaises(errors.UnknownSession) as foreign:
            self.add("s1", sid, 1, owner="other")
        with self.assertRaises(errors.UnknownSession) as unknown:
            self.add("s1", "B" * 22, 1, owner="other")
        self.assertEqual(str(foreign.exception).replace(sid, "X"), str(unknown.exception).replace("B" * 22, "X"))
        self.assertEqual(session.version, version)
        self.assertEqual(self.cart_on("s1", sid), [])

    def test_failed_method_changes_nothing(self):
        """A method that raises is ServiceFailed and what it changed is dropped."""
        sid, _, session = self.open()
        self.add("s1", sid, 1)
        version = session.version
        with self.assertRaises(errors.ServiceFailed) as caught:
            self.wait(self.calls("s1").call("shop", sid, CallId("n", 2), False, "broken", "spoil", []))
        self.assertIn("RuntimeError: out of stock", str(caught.exception))
        self.assertEqual(self.cart_on("s1", sid), ["apple"])
        self.assertEqual(session.version, version)

    def test_reserved_keys_refused(self):
        """The built-in set may not write the appliance's own keys, and keys hides them."""
        sid, _, _ = self.open()
        calls = self.calls("s1")
        self.assertRaises(errors.CallRefused, self.wait, calls.call("shop", sid, CallId("n", 1), False, "", "set", [records.slot(CallId("n", 1)), 1]))
        self.wait(calls.call("shop", sid, CallId("n", 2), False, "", "set", ["a", 1]))
        self.assertEqual(self.wait(calls.call("shop", sid, CallId("n", 3), False, "", "keys", []))[0], '["a"]')

    def test_unknown_method_refused(self):
        """A method the service does not define (or a private one) is refused before anything runs."""
        sid, _, _ = self.open()
        for method in ("nope", "__init__", "_check"):
            self.assertRaises(errors.CallRefused, self.wait, self.calls("s1").call("shop", sid, CallId("n", 1), False, "cart", method, []))


class GateTests(SynchronousTestCase):
    """
    The client port over PB in memory, in front of a simulated node.
    """

    def setUp(self):
        self.sim = Sim()
        server = self.sim.servers["s1"]
        calls = SessionCalls(server.node, Services((CART,)), self.sim.config.node_ids)
        self.factory = guard.GuardedServerFactory(
            clientgate.ClientRealm("s1", calls, {"s1": [self.sim.config.node_ids["s1"], "127.0.0.1", 1]}),
            [clientgate.ClientChecker({"shop": "shop-password"})],
            server.clock,
            5.0,
        )

    def login(self, user=b"shop", password=b"shop-password"):
        client_factory = pb.PBClientFactory()
        _, _, self.pump = connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), lambda: client_factory.buildProtocol(None)
        )
        d = client_factory.login(UsernamePassword(user, password))
        self.pump.flush()
        return d

    def result(self, d):
        box = []
        d.addBoth(box.append)
        for _ in range(200):
            self.pump.flush()
            if box:
                break
            self.sim.run(self.sim.settings.heartbeat_interval)
        self.assertTrue(box, "no answer")
        return box[0]

    def test_wrong_password_refused(self):
        """A wrong password is refused at login."""
        failure = self.result(self.login(password=b"wrong-password"))
        self.assertTrue(failure.check("appliance.replication.guard.LoginRefused"))

    def test_open_and_call(self):
        """Over PB a client opens a session, calls the cart and gets JSON text and the pair sum."""
        avatar = self.result(self.login())
        hello = self.result(avatar.callRemote("hello"))
        self.assertEqual(hello["node"], "s1")
        sid, total = self.result(avatar.callRemote("open"))
        text, again = self.result(avatar.callRemote("call", sid, "n", 1, False, "cart", "add", '["apple"]'))
        self.assertEqual((text, again), ("1", total))
        self.assertEqual(self.result(avatar.callRemote("call", sid, "n", 2, False, "cart", "items", "[]"))[0], '["apple"]')

    def test_malformed_calls_refused(self):
        """Malformed handles, ids, names and arguments are CallRefused and touch nothing."""
        avatar = self.result(self.login())
        sid, _ = self.result(avatar.callRemote("open"))
        session = self.sim.servers["s1"].node.store.get(sid)
        version = session.version
        bad = [
            ("x", "n", 1, False, "cart", "add", '["a"]'),
            (sid, "", 1, False, "cart", "add", '["a"]'),
            (sid, "n", -1, False, "cart", "add", '["a"]'),
            (sid, "n", True, False, "cart", "add", '["a"]'),
            (sid, "n", 1, "yes", "cart", "add", '["a"]'),
            (sid, "n", 1, False, "cart", "add", '{"a": 1}'),
            (sid, "n", 1, False, "cart", "add", "not json"),
            (sid, "n", 1, False, "cart", "add", "[" * 100000 + "]" * 100000),
            (sid, "n", 1, False, "cart", "add", "[" + "1," * 200000 + "1]"),
            (sid, "n", 1, False, "cart" * 20, "add", '["a"]'),
            (sid, "n", 1, False, "cart", "add", ["a"]),
        ]
        for args in bad:
            failure = self.result(avatar.callRemote("call", *args))
            self.assertTrue(failure.check(errors.CallRefused), (args[:7], failure))
        self.assertEqual(session.version, version)
        self.assertEqual(self.result(avatar.callRemote("call", sid, "n", 1, False, "cart", "add", '["a"]'))[0], "1")


class ServiceCheckTests(SynchronousTestCase):
    """
    A service that cannot be used stops startup with one line naming its section and key.
    """

    BASE = (
        "[cluster]\nname = app.cluster.test\nsecret = a-long-secret\n"
        "[node:s1]\nhttp = 127.0.0.1:9001\nreplication = 127.0.0.1:9101\nmachine = m\nrack = r\n"
    )

    def check(self, section: str, key: str, words: str):
        from appliance.config import ClusterConfig, ConfigError

        cluster = ClusterConfig.from_string(self.BASE + section, "test.ini")
        with self.assertRaises(ConfigError) as caught:
            Services.checked(cluster)
        self.assertEqual((caught.exception.section, caught.exception.key), ("service:cart", key))
        self.assertIn(words, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_missing_module(self):
        """An object whose module does not exist is named."""
        self.check("[service:cart]\nobject = no.such.module:Cart\n", "object", "cannot import no.such.module:Cart")

    def test_not_a_class(self):
        """An object that is not a class with public methods is refused."""
        self.check("[service:cart]\nobject = appliance.demo.cart:MAX_ITEM\n", "object", "not a class")

    def test_idempotent_method_missing(self):
        """An idempotent name the class lacks is refused."""
        self.check("[service:cart]\nobject = appliance.demo.cart:Cart\nidempotent = items, total\n", "idempotent", "no method total")

    def test_shipped_services_load(self):
        """The shipped cart service passes the check."""
        from appliance.config import ClusterConfig

        cluster = ClusterConfig.from_string(self.BASE + "[service:cart]\nobject = appliance.demo.cart:Cart\nidempotent = items\n")
        self.assertEqual(Services.checked(cluster).find("cart", "items"), (Cart, True))

    def test_twistd_prints_one_line(self):
        """twistd on a config whose service cannot be imported exits 1 with one line, no traceback."""
        import os
        import subprocess
        import sys

        from .helpers import ROOT

        path = os.path.abspath(self.mktemp() + ".ini")
        with open(path, "w") as f:
            f.write(self.BASE + "[service:cart]\nobject = no.such.module:Cart\n")
        proc = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
             "appliance", "--config", path, "--node", "s1", "--roles", "server"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(proc.returncode, 1)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith(f"appliance: {path}: [service:cart] object: cannot import no.such.module:Cart"))
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)
