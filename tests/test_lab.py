"""
The fault lab's own mechanics: hosts in network namespaces and nothing in
the machine's, silent and reversible cuts, delay on established
connections, process faults, clean-up of dead runs, and the clear refusal
where the lab cannot run.  These need root and nft/ip; without them every
test fails with the lab's one-sentence reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.config import ClusterConfig
from appliance.runtime import child_environment
from appliance.testing import chaos
from appliance.testing.lab import (
    HTTP_PORT,
    PREFIX,
    REPLICATION_PORT,
    Lab,
    LabUnavailable,
    cluster_ini,
    inside,
    remove_leftovers,
    request,
)
from appliance.testing.workload import Client, items_of, outcome_of


def root_links():
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout


class BareLab:
    """
    A started lab without the appliance (network and relays only); sockets
    are opened inside its hosts from this process.
    """

    def __init__(self, case, servers=3):
        self.case = case
        self.lab = Lab(case.mktemp(), servers=servers)
        self.listening = {}
        case.addCleanup(self.lab.stop)
        self.lab.start(appliance=False)

    def listen(self, host, port, kind=socket.SOCK_STREAM):
        if (host, port, kind) not in self.listening:
            self.listening[host, port, kind] = self._listen(host, port, kind)
        return self.listening[host, port, kind]

    def _listen(self, host, port, kind):
        with inside(self.lab.namespace(host)):
            s = socket.socket(socket.AF_INET, kind)
        self.case.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.lab.address(host), port))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        s.settimeout(5)
        return s

    def socket(self, host, kind=socket.SOCK_STREAM, timeout=1.0):
        with inside(self.lab.namespace(host)):
            s = socket.socket(socket.AF_INET, kind)
        self.case.addCleanup(s.close)
        s.settimeout(timeout)
        return s

    def connect(self, source, destination, port, timeout=1.0):
        """
        A connection attempt: ("connected", seconds) or (exception name, seconds).
        """
        s = self.socket(source, timeout=timeout)
        began = time.monotonic()
        try:
            s.connect((self.lab.address(destination), port))
            outcome = "connected"
        except socket.timeout:
            # Python 3.9 (PyPy here) names it "timeout"; from 3.10 it is TimeoutError.
            outcome = "TimeoutError"
        except OSError as e:
            outcome = type(e).__name__
        finally:
            s.close()
        return outcome, time.monotonic() - began

    def pair(self, source, destination, port):
        """
        An established connection (client side, server side).
        """
        server = self.listen(destination, port)
        client = self.socket(source, timeout=5)
        client.connect((self.lab.address(destination), port))
        accepted, _ = server.accept()
        self.case.addCleanup(accepted.close)
        accepted.settimeout(5)
        return client, accepted


class NetworkTests(SynchronousTestCase):
    def test_hosts_live_in_namespaces_of_their_own(self):
        """Every host is a namespace with lo up and its own address; nothing is added to the machine's namespace."""
        before = root_links()
        bare = BareLab(self)
        lab = bare.lab
        self.assertEqual(root_links(), before)
        for host in ("s1", "s2", "s3", "lb", "c1"):
            out = subprocess.run(["ip", "-n", lab.namespace(host), "-o", "addr", "show"], capture_output=True,
                                 text=True, check=True).stdout  # fmt: skip
            self.assertIn(f"inet {lab.address(host)}/15", out)
            self.assertIn("lo", out)
            self.assertTrue(lab.address(host).startswith("198.18."))
        bridge = subprocess.run(["ip", "-n", lab.namespace("br"), "-o", "link", "show", "type", "bridge"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        self.assertIn("br0", bridge)
        self.assertEqual(bare.connect("c1", "s2", HTTP_PORT)[0], "ConnectionRefusedError")

    def test_stop_deletes_every_namespace(self):
        """After stop no namespace of the lab is left, and stopping twice is harmless."""
        lab = BareLab(self).lab
        names = list(lab.namespaces)
        self.assertEqual(len(names), 6)
        lab.stop()
        lab.stop()
        left = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        self.assertEqual(left & set(names), set())

    def test_leftovers_of_a_dead_run_are_removed(self):
        """A namespace named for a dead owner pid is deleted; one of a live owner is kept."""
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = f"{PREFIX}-{dead.pid}-1-s1"
        live = f"{PREFIX}-{os.getpid()}-999-s1"
        for name in (stale, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
            self.addCleanup(subprocess.run, ["ip", "netns", "del", name], capture_output=True)
        removed = remove_leftovers()
        self.assertIn(stale, removed)
        self.assertNotIn(live, removed)
        self.assertFalse(os.path.exists(f"/run/netns/{stale}"))
        self.assertTrue(os.path.exists(f"/run/netns/{live}"))

    def test_refuses_with_one_sentence_without_its_tools(self):
        """Without ip and nft on the PATH, start raises LabUnavailable naming what is missing and creates nothing."""
        path = os.environ.get("PATH", "")
        os.environ["PATH"] = self.mktemp()
        self.addCleanup(os.environ.__setitem__, "PATH", path)
        lab = Lab(self.mktemp())
        e = self.assertRaises(LabUnavailable, lab.start)
        self.assertIn("ip and nft not found", str(e))
        self.assertNotIn("\n", str(e))
        self.assertEqual(lab.namespaces, [])


class CutTests(SynchronousTestCase):
    def setUp(self):
        self.bare = BareLab(self)
        self.lab = self.bare.lab
        self.bare.listen("s2", HTTP_PORT)
        self.bare.listen("s2", REPLICATION_PORT)

    def assertTimesOut(self, source, destination, port):
        outcome, seconds = self.bare.connect(source, destination, port, timeout=1.0)
        self.assertEqual(outcome, "TimeoutError", f"{source}->{destination}:{port}")
        self.assertGreaterEqual(seconds, 0.9)

    def assertConnects(self, source, destination, port):
        self.assertEqual(self.bare.connect(source, destination, port)[0], "connected", f"{source}->{destination}:{port}")

    def test_cut_is_silent_and_heals(self):
        """Across a cut a connection attempt times out (no RST, ICMP or EPERM), direct or relayed; heal restores it."""
        self.assertConnects("s1", "s2", HTTP_PORT)
        self.assertConnects("s1", "s2", REPLICATION_PORT)
        self.lab.cut("s1", "s2")
        self.assertTimesOut("s1", "s2", HTTP_PORT)
        self.assertTimesOut("s1", "s2", REPLICATION_PORT)
        self.assertConnects("s3", "s2", REPLICATION_PORT)
        self.lab.heal()
        self.assertConnects("s1", "s2", HTTP_PORT)
        self.assertConnects("s1", "s2", REPLICATION_PORT)
        self.assertEqual([e["what"] for e in self.lab.events], ["cut", "heal"])
        self.assertLess(self.lab.events[0]["t"], self.lab.events[1]["t"])

    def test_cut_stops_an_established_relayed_connection_until_heal(self):
        """Data on a connection opened before the cut stops flowing, and arrives after heal."""
        client, server = self.bare.pair("s1", "s2", REPLICATION_PORT)
        client.sendall(b"before")
        self.assertEqual(server.recv(100), b"before")
        self.lab.cut("s1", "s2")
        client.sendall(b"during")
        server.settimeout(1.0)
        self.assertRaises(socket.timeout, server.recv, 100)
        self.lab.heal()
        server.settimeout(10)
        self.assertEqual(server.recv(100), b"during")

    def test_one_way_cut(self):
        """cut_one_way drops only one direction: datagrams flow the other way; TCP cannot connect either way."""
        self.bare.listen("s1", REPLICATION_PORT)
        s1_in = self.bare.listen("s1", 9999, socket.SOCK_DGRAM)
        s2_in = self.bare.listen("s2", 9999, socket.SOCK_DGRAM)
        self.lab.cut_one_way("s1", "s2")
        self.bare.socket("s1", socket.SOCK_DGRAM).sendto(b"lost", (self.lab.address("s2"), 9999))
        self.bare.socket("s2", socket.SOCK_DGRAM).sendto(b"kept", (self.lab.address("s1"), 9999))
        self.assertEqual(s1_in.recv(100), b"kept")
        s2_in.settimeout(1.0)
        self.assertRaises(socket.timeout, s2_in.recv, 100)
        self.assertTimesOut("s1", "s2", HTTP_PORT)
        self.assertTimesOut("s1", "s2", REPLICATION_PORT)
        self.assertTimesOut("s2", "s1", REPLICATION_PORT)
        self.lab.heal()
        self.assertConnects("s2", "s1", REPLICATION_PORT)
        self.bare.socket("s1", socket.SOCK_DGRAM).sendto(b"back", (self.lab.address("s2"), 9999))
        s2_in.settimeout(5)
        self.assertEqual(s2_in.recv(100), b"back")

    def test_isolate_from_some_hosts(self):
        """isolate(host, others) cuts host from those others only."""
        self.lab.isolate("s2", ["s1", "s3"])
        self.assertTimesOut("s1", "s2", HTTP_PORT)
        self.assertTimesOut("s3", "s2", REPLICATION_PORT)
        self.assertConnects("lb", "s2", HTTP_PORT)
        self.lab.isolate("s2")
        self.assertTimesOut("lb", "s2", HTTP_PORT)
        self.assertTimesOut("c1", "s2", HTTP_PORT)
        self.lab.heal()
        self.assertConnects("lb", "s2", HTTP_PORT)

    def test_unknown_host_is_refused(self):
        """A fault naming a host the lab does not have raises ValueError."""
        self.assertRaises(ValueError, self.lab.cut, "s1", "s9")


class DelayTests(SynchronousTestCase):
    def test_delay_reaches_an_established_connection(self):
        """delay() slows a connection opened before it by the delay each way; undelay() takes it back."""
        bare = BareLab(self)
        client, server = bare.pair("s1", "s2", REPLICATION_PORT)

        def round_trip():
            began = time.monotonic()
            client.sendall(b"ping")
            self.assertEqual(server.recv(100), b"ping")
            server.sendall(b"pong")
            self.assertEqual(client.recv(100), b"pong")
            return time.monotonic() - began

        round_trip()
        bare.lab.delay("s1", "s2", 0.3)
        self.assertGreaterEqual(round_trip(), 0.6)
        bare.lab.undelay("s1", "s2")
        self.assertLess(round_trip(), 0.6)

    def test_delay_needs_relayed_traffic(self):
        """Delay between hosts whose traffic is not relayed is refused rather than silently ignored."""
        bare = BareLab(self, servers=2)
        self.assertRaises(ValueError, bare.lab.delay, "lb", "s1", 0.1)


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def settled(predicate, timeout=10.0):
    """
    Whether C{predicate()} holds within C{timeout}: signals and exec take
    effect asynchronously.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class ProcessTests(SynchronousTestCase):
    def test_pause_resume_kill_restart(self):
        """pause stops the process, resume continues it, kill ends it, restart runs it again with the same argv."""
        lab = BareLab(self, servers=2).lab
        argv = [sys.executable, "-c", "import time; time.sleep(120)"]
        host = os.stat(f"/run/netns/{lab.namespace('s1')}").st_ino

        def in_host(popen):
            return lambda: os.stat(f"/proc/{popen.pid}/ns/net").st_ino == host

        first = lab.spawn("sleeper", "s1", argv)
        self.assertTrue(settled(in_host(first)))
        lab.pause("sleeper")
        self.assertTrue(settled(lambda: state(first.pid) == "T"))
        lab.resume("sleeper")
        self.assertTrue(settled(lambda: state(first.pid) != "T"))
        lab.kill("sleeper")
        self.assertEqual(first.returncode, -9)
        lab.restart("sleeper")
        second = lab.processes["sleeper"].popen
        self.assertNotEqual(second.pid, first.pid)
        self.assertIsNone(second.poll())
        self.assertEqual(lab.processes["sleeper"].argv, argv)
        self.assertTrue(settled(in_host(second)))
        self.assertEqual([e["what"] for e in lab.events], ["pause", "resume", "kill", "restart"])


class ApplianceLabTests(SynchronousTestCase):
    def test_cluster_runs_across_hosts(self):
        """Every role starts in its host, in the environment the supervisor gives its children; a client in c1 writes a cart through the balancer in lb."""
        lab = Lab(self.mktemp(), servers=2)
        self.addCleanup(lab.stop)
        lab.start()
        for name in ("s1", "s2", "lb"):
            pid = lab.processes[name].popen.pid
            ns = os.stat(f"/run/netns/{lab.namespace(name)}").st_ino
            self.assertEqual(os.stat(f"/proc/{pid}/ns/net").st_ino, ns, name)
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            for key in ("PYPY_GC_INCREMENT_STEP", "PYPY_GC_NURSERY"):
                self.assertEqual(environ.get(key.encode()), child_environment(os.environ)[key].encode(), name)
        status, headers, body = request(lab.namespace("c1"), "198.18.0.2", HTTP_PORT, "POST", "/cart/items",
                                        b"item=apple", {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        self.assertEqual((status, json.loads(body)), (200, ["apple"]))
        self.assertIn("APPSESSION=", headers["Set-Cookie"])
        self.assertEqual(lab.health("s1")["peers"], {"s2": True})

    def test_config_keeps_shipped_timing(self):
        """The lab's cluster.ini is valid and leaves every timing key at its shipped default."""
        cluster = ClusterConfig.from_string(cluster_ini(3, "async"))
        shipped = ClusterConfig.from_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "etc", "cluster.ini"))
        for key in ("heartbeat_interval", "heartbeat_misses", "replication_timeout", "digest_interval", "session_timeout"):
            self.assertEqual(getattr(cluster.cluster, key), getattr(shipped.cluster, key), key)
        for key in ("connect_timeout", "response_timeout", "health_interval", "health_fall", "down_time"):
            self.assertEqual(getattr(cluster.balancers[0], key), getattr(shipped.balancers[0], key), key)
        self.assertEqual(cluster.cluster.replication, "async")
        self.assertEqual(cluster.balancers[0].node, "s1")


class ScheduleTests(SynchronousTestCase):
    def test_every_kind_once_per_round(self):
        """Each round of the schedule holds every fault kind once, on servers of the lab."""
        steps = chaos.schedule(3, 2 * len(chaos.KINDS), ("s1", "s2", "s3"))
        for round_ in (steps[: len(chaos.KINDS)], steps[len(chaos.KINDS) :]):
            self.assertEqual(sorted(s.kind for s in round_), sorted(chaos.KINDS))
        for s in steps:
            self.assertTrue(set(s.servers) <= {"s1", "s2", "s3"})
            self.assertEqual(len(set(s.servers)), len(s.servers))
            self.assertTrue(3.0 <= s.hold <= 8.0)

    def test_seeded(self):
        """The same seed gives the same schedule; another seed another one."""
        self.assertEqual(chaos.schedule(5, 20), chaos.schedule(5, 20))
        self.assertNotEqual(chaos.schedule(5, 20), chaos.schedule(6, 20))

    def test_unknown_kind_is_refused(self):
        """A kind outside the known faults is a ValueError naming the known ones."""
        e = self.assertRaises(ValueError, chaos.schedule, 1, 3, kinds=("cut", "flood"))
        self.assertIn("isolate-servers", str(e))


class WorkloadClientTests(SynchronousTestCase):
    def client(self, sticky):
        return Client(MemoryReactorClock(), 0, "http://198.18.0.2:8080", "APPSESSION", 3.0, sticky=sticky)

    def test_client_follows_every_cookie(self):
        """A plain client takes every cookie it is given, new hint or new session."""
        c = self.client(sticky=False)
        for cookie in ("a!s1!s2", "a!s3!s1", "b!s2!s3"):
            c._learn(cookie)
            self.assertEqual(c.cookie, cookie)
        self.assertEqual(c.route, "s2!s3")

    def test_sticky_client_keeps_the_old_hint_of_its_session(self):
        """A sticky client keeps its session's first routing hint but takes a new session's cookie."""
        c = self.client(sticky=True)
        c._learn("a!s1!s2")
        c._learn("a!s3!s1")
        self.assertEqual(c.cookie, "a!s1!s2")
        c._learn("b!s3!s1")
        self.assertEqual(c.cookie, "b!s3!s1")

    def test_outcomes_and_items(self):
        """Timeouts and errors become outcomes; only the expected shape of answer counts as a cart."""
        self.assertEqual(outcome_of(Failure(defer.TimeoutError())), "timeout")
        self.assertEqual(outcome_of(Failure(error.ConnectionRefusedError())), "error:ConnectionRefusedError")
        self.assertEqual(items_of("read", {"items": ["c0-1"]}), ["c0-1"])
        self.assertEqual(items_of("add", ["c0-1"]), ["c0-1"])
        self.assertIsNone(items_of("read", ["c0-1"]))
        self.assertIsNone(items_of("add", {"error": "x"}))
