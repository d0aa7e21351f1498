"""
Reload without restart: the pure config diff (what may change, what is
refused and why), the voters' lease across a change of one voter, the
Reloader's all-or-nothing rule, and SIGHUP to real processes (a node
added, a node removed, a bad edit).
"""

from __future__ import annotations

import os
import signal

from twisted.trial.unittest import SynchronousTestCase

from appliance.config import ClusterConfig, ConfigError
from appliance.core.membership import NEVER, Lease, Membership, Timing
from appliance.reload import Changes, Reloader, diff

from .helpers import RealNodes, free_ports, health, session_call, spawn, twistd, wait_for, write

BASE = """
[cluster]
name = app.cluster.test
secret = a-long-secret
heartbeat_interval = 250ms
heartbeat_misses = 4
replication_timeout = 2s
{cluster}

[balancer:lb1]
listen = 127.0.0.1:{lb}
witness = 127.0.0.1:{witness}
health_interval = 250ms
{balancer}

[app:cart]
mount = /cart
wsgi = appliance.demo.cart:app
threads = no
"""

NODE = """
[node:{name}]
http = 127.0.0.1:{http}
replication = 127.0.0.1:{repl}
machine = m{index}
rack = r1
"""


class Layout:
    """
    Config texts for a cluster of nodes on fixed ports, edited by
    replacing parts of it.
    """

    def __init__(self, names=("s1", "s2", "s3"), count: int = 5):
        ports = free_ports(2 + 2 * count)
        self.lb, self.witness = ports[0], ports[1]
        self.nodes = {f"s{i + 1}": (ports[2 + 2 * i], ports[3 + 2 * i]) for i in range(count)}
        self.names = names

    def text(self, names=None, cluster: str = "", balancer: str = "", extra: str = "") -> str:
        text = BASE.format(cluster=cluster, balancer=balancer, lb=self.lb, witness=self.witness)
        for name in names or self.names:
            http, repl = self.nodes[name]
            text += NODE.format(name=name, http=http, repl=repl, index=name[1:])
        return text + extra

    def config(self, names=None, path: str = "c.ini", **parts) -> ClusterConfig:
        return ClusterConfig.from_string(self.text(names, **parts), path)


class DiffTests(SynchronousTestCase):
    def setUp(self):
        self.layout = Layout()
        self.old = self.layout.config()

    def refused(self, new: ClusterConfig) -> str:
        with self.assertRaises(ConfigError) as caught:
            diff(self.old, new)
        return str(caught.exception)

    def test_nothing_changed(self):
        """The same file again changes nothing."""
        changes = diff(self.old, self.layout.config())
        self.assertFalse(changes)
        self.assertEqual(changes, Changes())
        self.assertEqual(changes.summary(), "nothing changed")

    def test_one_server_added(self):
        """A node added is one change: the server joins."""
        changes = diff(self.old, self.layout.config(("s1", "s2", "s3", "s4")))
        self.assertEqual((changes.added, changes.removed), (("s4",), ()))
        self.assertEqual(changes.summary(), "servers added: s4")

    def test_one_server_removed(self):
        """A node removed is one change: the server leaves (drained first)."""
        changes = diff(self.old, self.layout.config(("s1", "s3")))
        self.assertEqual((changes.added, changes.removed), ((), ("s2",)))

    def test_two_servers_at_once_refused(self):
        """Adding (or swapping) two session servers in one edit is refused with one line saying to do one at a time."""
        self.assertEqual(
            self.refused(self.layout.config(("s1", "s2", "s3", "s4", "s5"))),
            "c.ini: [node:s5]: adds or removes 2 voters at once (node:s4, node:s5): add or remove one session"
            " server (or witness balancer) per reload, so that the old and the new majority overlap",
        )
        self.assertIn("at once (node:s4, node:s3)", self.refused(self.layout.config(("s1", "s2", "s4"))))

    def test_witness_counts_as_a_voter(self):
        """A witness balancer added with a server is two voters: refused; a plain balancer with a server is fine."""
        witness, plain = free_ports(2)
        lb2 = f"\n[balancer:lb2]\nlisten = 127.0.0.1:{plain}\n"
        changes = diff(self.old, self.layout.config(("s1", "s2", "s3", "s4"), extra=lb2))
        self.assertEqual((changes.added, changes.balancers_added), (("s4",), ("lb2",)))
        self.assertIn(
            "voters at once (node:s4, balancer:lb2)",
            self.refused(self.layout.config(("s1", "s2", "s3", "s4"), extra=lb2 + f"witness = 127.0.0.1:{witness}\n")),
        )

    def test_tunables_apply(self):
        """Changed tunables of [cluster], [balancer:NAME] are listed as [section] key."""
        changes = diff(
            self.old,
            self.layout.config(cluster="max_sessions = 7\nlog_format = json", balancer="response_timeout = 3s\npolicy = fastest"),
        )
        self.assertEqual(
            sorted(changes.tunables),
            ["[balancer:lb1] policy", "[balancer:lb1] response_timeout", "[cluster] log_format", "[cluster] max_sessions"],
        )
        self.assertEqual(changes.as_dict()["tunables"], list(changes.tunables))

    def test_fixed_keys_refused(self):
        """A key that cannot change while running refuses the edit with a line naming it and "restart to change it"."""
        restart = "cannot change while running: restart to change it"
        cases = {
            "secret": (self.layout.text(cluster="").replace("a-long-secret", "another-long-secret"), "[cluster] secret"),
            "cookie": (self.layout.text(cluster="cookie = OTHER"), "[cluster] cookie"),
            "replication": (self.layout.text(cluster="replication = async"), "[cluster] replication"),
            "lease": (self.layout.text(cluster="lease_time = 3s"), "[cluster] lease_time"),
            "listen": (self.layout.text(balancer="").replace(f"listen = 127.0.0.1:{self.layout.lb}", "listen = 127.0.0.1:1"), "[balancer:lb1] listen"),
            "header": (self.layout.text(balancer="max_header_bytes = 8KiB"), "[balancer:lb1] max_header_bytes"),
            "http": (self.layout.text().replace(f"http = 127.0.0.1:{self.layout.nodes['s2'][0]}", "http = 127.0.0.1:2"), "[node:s2] http"),
            "rack": (self.layout.text().replace("machine = m3\nrack = r1", "machine = m3\nrack = r9"), "[node:s3] rack"),
            "id": (self.layout.text().replace("machine = m1\n", "machine = m1\nid = 12345\n"), "[node:s1] id"),
        }
        for what, (text, where) in cases.items():
            self.assertEqual(self.refused(ClusterConfig.from_string(text, "c.ini")), f"c.ini: {where}: {restart}", what)

    def test_applications_fixed(self):
        """A new, removed or changed application, client or service section refuses the edit, naming the section."""
        app = "\n[app:more]\nmount = /more\nwsgi = appliance.demo.cart:app\n"
        self.assertEqual(self.refused(self.layout.config(extra=app)), "c.ini: [app:more]: cannot change while running: restart to change it")
        client = "\n[client:demo]\npassword = a-client-password\n"
        self.assertEqual(self.refused(self.layout.config(extra=client)), "c.ini: [client:demo]: cannot change while running: restart to change it")

    def test_dns_tunables_and_presence(self):
        """[dns] ttl and rate limits apply; adding the responder needs a restart."""
        port, = free_ports(1)
        dns = f"\n[dns]\nlisten = 127.0.0.1:{port}\n"
        self.assertEqual(self.refused(self.layout.config(extra=dns)), "c.ini: [dns]: cannot change while running: restart to change it")
        old = self.layout.config(extra=dns)
        changes = diff(old, self.layout.config(extra=dns + "ttl = 9\nrrl_rate = 5\n"))
        self.assertEqual(sorted(changes.tunables), ["[dns] rrl_rate", "[dns] ttl"])


class LeaseChangeTests(SynchronousTestCase):
    T = Timing(lease=1.5, drift=0.0)

    def test_added_voter_has_granted_nothing(self):
        """A voter added keeps the grants of the others; the majority grows with it and the lease never gets longer."""
        lease = Lease("s1", ("s1", "s2", "s3"), self.T)
        lease.granted("s2", 10.0)
        self.assertEqual(lease.expires, 11.5)
        lease.reconfigure(("s1", "s2", "s3", "s4"))
        self.assertEqual((lease.needed, lease.expires), (3, NEVER))
        lease.granted("s4", 10.5)
        self.assertEqual(lease.expires, 11.5)

    def test_removed_voter_never_extends(self):
        """Removing a voter drops its grant and lowers the majority, but never makes a held lease last longer."""
        lease = Lease("s1", ("s1", "s2", "s3", "s4"), self.T)
        lease.granted("s2", 10.0)
        lease.granted("s3", 11.0)
        self.assertEqual(lease.expires, 11.5)
        lease.reconfigure(("s1", "s3", "s4"))
        self.assertEqual((lease.needed, lease.expires), (2, 11.5))
        lease.granted("s3", 11.2)
        self.assertEqual(lease.expires, 12.7)

    def test_membership_counts_new_voters(self):
        """After a change the verdict needs a majority of the new voters, and only they may vote."""
        m = Membership("s1", 1, ("s1", "s2", "s3"), ("lb1",), self.T, 0.0)
        m.reconfigure(("s1", "s2", "s3", "s4"), ("lb1",))
        self.assertEqual((m.servers, m.needed), (("s1", "s2", "s3", "s4"), 3))
        m.seen("s2", 5)
        self.assertFalse(m.tally("s2", 5, [("s3", True), ("s9", True)], 100.0))
        self.assertTrue(m.tally("s2", 5, [("s3", True), ("s4", True)], 100.0))


class ReloaderTests(SynchronousTestCase):
    def setUp(self):
        self.layout = Layout()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = write(os.path.join(self.dir, "cluster.ini"), self.layout.text())
        self.applied = []
        self.reloader = Reloader(ClusterConfig.from_path(self.path), ClusterConfig.from_path, lambda c, ch: self.applied.append((c, ch)))

    def test_applies_the_edit(self):
        """A valid edit is applied once and becomes the running configuration; the Deferred fires with the changes."""
        write(self.path, self.layout.text(("s1", "s2", "s3", "s4")))
        changes = self.successResultOf(self.reloader.reload())
        self.assertEqual(changes.added, ("s4",))
        self.assertEqual([ch for _, ch in self.applied], [changes])
        self.assertEqual(self.reloader.current.node_names, ("s1", "s2", "s3", "s4"))
        self.assertFalse(self.successResultOf(self.reloader.reload()))
        self.assertEqual(len(self.applied), 1)

    def test_bad_edit_changes_nothing(self):
        """An invalid or refused edit fails with its ConfigError, applies nothing and keeps the running configuration."""
        running = self.reloader.current
        write(self.path, self.layout.text(cluster="max_sessions = lots"))
        failure = self.failureResultOf(self.reloader.reload(), ConfigError)
        self.assertIn("[cluster] max_sessions", str(failure.value))
        write(self.path, self.layout.text(cluster="cookie = OTHER"))
        self.failureResultOf(self.reloader.reload(), ConfigError)
        self.assertEqual((self.applied, self.reloader.current), ([], running))


class SighupTests(SynchronousTestCase):
    """
    twistd -n appliance (the all-in-one: each session server a supervised
    child), edited and sent SIGHUP.
    """

    def setUp(self):
        self.layout = Layout()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = write(os.path.join(self.dir, "cluster.ini"), self.layout.text())
        self.log_path = os.path.join(self.dir, "appliance.log")
        self.proc = spawn(self, twistd("--config", self.path), self.log_path)
        self.wait_linked(("s1", "s2", "s3"))

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def health(self, name):
        return health(self.layout.nodes[name][0])

    def wait_linked(self, names, timeout=60):
        for name in names:
            others = set(names) - {name}
            wait_for(lambda: (self.health(name) or {}).get("status") == "ok"
                     and {p for p, up in self.health(name)["peers"].items() if up} == others,
                     timeout, f"{name} linked to exactly {sorted(others)}")

    def hangup(self, text: str) -> None:
        write(self.path, text)
        os.kill(self.proc.pid, signal.SIGHUP)

    def cart(self, cookie=None, item=None):
        url = f"http://127.0.0.1:{self.layout.lb}/cart" + ("/items" if item else "")
        status, body, cookie = session_call("POST" if item else "GET", url, cookie, {"item": item} if item else None)
        self.assertEqual(status, 200, body)
        return body, cookie

    def test_node_added(self):
        """An added node's child starts, every server links to it, and the balancer places new sessions on it."""
        self.hangup(self.layout.text(("s1", "s2", "s3", "s4")))
        self.wait_linked(("s1", "s2", "s3", "s4"))
        wait_for(lambda: "reloaded " in self.log() and "servers added: s4" in self.log(), 10, "the reload logged")
        # The balancer routes to s4 once its own health checks have passed
        # health_rise times, which may be after the servers linked to it.
        wait_for(lambda: "s4" in self.cart(item="apple")[1].split("!")[1:], 20, "a new session placed on s4")
        self.assertIsNone(self.proc.poll())

    def test_node_removed(self):
        """A removed node drains (its carts move, nothing lost) and exits; the others forget it."""
        carts = []
        for i in range(9):
            items, cookie = self.cart(item=f"item{i}")
            carts.append((items, cookie))
        pid = self.health("s3")["pid"]
        self.hangup(self.layout.text(("s1", "s2")))
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
                 60, "s3 to exit")
        self.wait_linked(("s1", "s2"))
        wait_for(lambda: all("s3" not in self.health(n)["peers"] for n in ("s1", "s2")), 30, "s3 forgotten")
        for items, cookie in carts:
            self.assertEqual(self.cart(cookie)[0], {"items": items})
        self.assertIn("drained: ", self.log())
        self.assertIsNone(self.proc.poll())

    def test_bad_edit_keeps_running(self):
        """An edit that changes a fixed key is refused with one logged line; the cluster runs on unchanged."""
        _, cookie = self.cart(item="apple")
        self.hangup(self.layout.text(cluster="cookie = OTHER"))
        refused = "reload refused, the running configuration stays: " + self.path + ": [cluster] cookie: cannot change"
        wait_for(lambda: refused in self.log(), 20, "the refusal logged")
        line = next(line for line in self.log().splitlines() if refused in line)
        self.assertRegex(line, r"^\S+ supervisor error appliance\.reload: ")
        self.assertEqual(self.cart(cookie)[0], {"items": ["apple"]})
        self.wait_linked(("s1", "s2", "s3"))
        self.assertIsNone(self.proc.poll())


class ServiceReconfigureTests(SynchronousTestCase):
    """
    The services' side of a reload, in memory: what a balancer and the
    DNS responder learn.
    """

    def test_dns_learns_balancers(self):
        """An added balancer is answered in DNS (once its check passes), a removed one no more; TTL and RRL follow."""
        from twisted.internet.defer import succeed

        from appliance.dns.service import DnsService

        from .test_dns_protocol import UDPMemoryReactor
        from .test_dns_support import CONFIG, NAME, answers, cluster, parse, query

        service = DnsService(UDPMemoryReactor(), cluster(), check=lambda front: succeed(True))
        service.startService()
        self.addCleanup(service.stopService)
        before = parse(service.responder.tcp(query(NAME)))
        self.assertEqual(sorted(answers(before)), ["192.0.2.1", "192.0.2.2"])
        edited = CONFIG.replace("[balancer:lb2]\nlisten = 192.0.2.2:8080", "[balancer:lb4]\nlisten = 192.0.2.4:8080")
        edited = edited.replace("ttl = 7", "ttl = 3").replace("rrl_rate = 5", "rrl_rate = 9")
        new = cluster(edited)
        changes = diff(cluster(), new)
        self.assertEqual((changes.balancers_added, changes.balancers_removed), (("lb4",), ("lb2",)))
        service.reconfigure(new, changes)
        after = parse(service.responder.tcp(query(NAME)))
        self.assertEqual(sorted(answers(after)), ["192.0.2.1", "192.0.2.4"])
        self.assertEqual({rr.ttl for rr in after.rr}, {3})
        self.assertEqual(service.responder.limiter.rate, 9)

    def test_balancer_learns_servers(self):
        """A balancer routes to an added server, forgets a removed one, and new connections get the new tunables."""
        from twisted.internet.task import Clock

        from appliance.balancer.framing import NO_BODY, RequestHead
        from appliance.balancer.policy import make_policy
        from appliance.balancer.service import Balancer

        layout = Layout()
        old = layout.config()
        balancer = Balancer(Clock(), old, old.balancers[0])
        balancer.session(b"APPSESSION=x")
        new = layout.config(("s1", "s2", "s4"), balancer="response_timeout = 3s\nnew_session_rate = 0\npolicy = fastest")
        balancer.reconfigure(new, new.balancers[0])
        self.assertEqual(sorted(balancer.addresses), ["s1", "s2", "s4"])
        self.assertEqual(sorted(balancer.nodes.names), ["s1", "s2", "s4"])
        self.assertEqual(balancer.node_names, frozenset(("s1", "s2", "s4")))
        self.assertEqual(balancer.kept_sessions, {})
        self.assertEqual((balancer.config.response_timeout, balancer.new_sessions), (3.0, None))
        self.assertIsInstance(balancer.policy, type(make_policy("fastest")))
        head = RequestHead(b"GET", b"/cart", 11, b"x", None, NO_BODY, 0, True, b"")
        plan, _ = balancer.plan(head)
        self.assertEqual(sorted(plan), ["s1", "s2", "s4"])


class NodeProcessesTests(SynchronousTestCase):
    """
    One process per node (--node, as a multi-host deployment runs them),
    each sent SIGHUP after the edit.
    """

    def test_removed_node_drains_itself(self):
        """The node an edit removed drains and exits on its own SIGHUP; its carts live on, the others forget it."""
        nodes = RealNodes(self)
        carts = []
        for i in range(6):
            status, body, cookie = session_call("POST", nodes.url(f"s{1 + i % 3}", "/cart/items"), None, {"item": f"i{i}"})
            self.assertEqual(status, 200, body)
            carts.append((body, cookie))
        section = nodes.text[nodes.text.index("[node:s3]"):nodes.text.index("[app:cart]")]
        write(nodes.config, nodes.text.replace(section, ""))
        for proc in nodes.procs.values():
            os.kill(proc.pid, signal.SIGHUP)
        nodes.procs["s3"].wait(60)
        self.assertEqual(nodes.procs["s3"].returncode, 0)
        self.assertIn("removed from the configuration: draining, then exiting", nodes.log("s3"))
        self.assertIn("drained: ", nodes.log("s3"))
        wait_for(lambda: all(set(health(nodes.ports[n][0])["peers"]) == {"s1", "s2"} - {n} for n in ("s1", "s2")), 30, "s3 forgotten")
        for items, cookie in carts:
            status, body, _ = session_call("GET", nodes.url("s1", "/cart"), cookie)
            self.assertEqual((status, body), (200, {"items": items}))
