"""
etc/cluster.ini loading: every mistake is one line naming file, section and key.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from appliance.config import Address, BatchWindow, ClusterConfig, ConfigError

from .helpers import ROOT

GOOD = """
[cluster]
name = app.cluster.test
secret = a-long-secret

[node:s1]
http = 127.0.0.1:9001
replication = 127.0.0.1:9101
machine = m1
rack = r1

[node:s2]
http = 127.0.0.1:9002
replication = 127.0.0.1:9102
machine = m2
rack = r2
"""


def load(text: str, path: str = "test.ini") -> ClusterConfig:
    return ClusterConfig.from_string(text, path)


class ShippedConfigTests(SynchronousTestCase):
    def test_shipped_config_loads(self):
        """The shipped etc/cluster.ini is a working all-in-one: DNS, a balancer, three nodes, the cart."""
        config = ClusterConfig.from_path(os.path.join(ROOT, "etc", "cluster.ini"))
        self.assertEqual(config.node_names, ("s1", "s2", "s3"))
        self.assertEqual(len(config.balancers), 1)
        self.assertEqual(config.dns.listen, Address("127.0.0.1", 5353))
        self.assertEqual(config.apps[0].wsgi, "appliance.demo.cart:app")
        self.assertEqual(config.cluster.cookie, "APPSESSION")
        self.assertEqual({n.machine for n in config.nodes}, {"m1", "m2", "m3"})

    def test_values_are_frozen(self):
        """Loaded values cannot be changed after startup."""
        config = load(GOOD)
        with self.assertRaises(Exception):
            config.cluster.secret = "x"

    def test_durations_sizes_and_windows(self):
        """Durations, sizes and batching windows are parsed with their units."""
        config = load(
            GOOD.replace(
                "secret = a-long-secret",
                "secret = a-long-secret\nreplication = batched\nbatch_interval = 250ms\n"
                "session_timeout = 2h\nmax_session_bytes = 2MiB\n"
                "batch_windows = 08:00-20:00 count=100 interval=10s, 22:00-02:00 count=5 interval=1s",
            )
        )
        c = config.cluster
        self.assertEqual((c.batch_interval, c.session_timeout, c.max_session_bytes), (0.25, 7200.0, 2 * 1024 * 1024))
        self.assertEqual(c.batch_windows, (BatchWindow(480, 1200, 100, 10.0), BatchWindow(1320, 120, 5, 1.0)))
        self.assertTrue(c.batch_windows[1].covers(23 * 60))
        self.assertTrue(c.batch_windows[1].covers(60))
        self.assertFalse(c.batch_windows[1].covers(3 * 60))


class MistakeTests(SynchronousTestCase):
    def check(self, text: str, section: str, key, words: str) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            load(text)
        e = caught.exception
        self.assertEqual((e.path, e.section, e.key), ("test.ini", section, key))
        self.assertIn(words, str(e))
        self.assertNotIn("\n", str(e))
        self.assertTrue(str(e).startswith("test.ini: [" + section + "]"))
        return e

    def test_unknown_section(self):
        """An unknown section is named."""
        self.check(GOOD + "\n[nodes:s3]\nhttp = 1\n", "nodes:s3", None, "unknown section")

    def test_unknown_key(self):
        """A misspelt key is named with its section."""
        self.check(GOOD.replace("rack = r1", "rack = r1\nrakc = r2"), "node:s1", "rakc", "unknown key")

    def test_bad_port(self):
        """A port out of range is refused."""
        self.check(GOOD.replace("127.0.0.1:9001", "127.0.0.1:70000"), "node:s1", "http", "1-65535")

    def test_not_an_address(self):
        """An address without a port is refused."""
        self.check(GOOD.replace("127.0.0.1:9001", "localhost"), "node:s1", "http", "host:port")

    def test_duplicate_port(self):
        """Two listeners on one address: the second names the first."""
        e = self.check(GOOD.replace("127.0.0.1:9002", "127.0.0.1:9101"), "node:s2", "http", "already used")
        self.assertIn("[node:s1] replication", str(e))

    def test_duplicate_node(self):
        """A node defined twice is a duplicate section."""
        self.check(GOOD + "\n[node:s1]\nhttp = 127.0.0.1:9003\n", "node:s1", None, "duplicate section")

    def test_duplicate_key(self):
        """A key given twice in one section is refused."""
        self.check(GOOD.replace("rack = r1", "rack = r1\nrack = r2"), "node:s1", "rack", "duplicate key")

    def test_missing_secret(self):
        """The cluster secret is required."""
        self.check(GOOD.replace("secret = a-long-secret\n", ""), "cluster", "secret", "is required")

    def test_short_secret(self):
        """A secret too short to protect replication is refused."""
        self.check(GOOD.replace("a-long-secret", "short"), "cluster", "secret", "at least 8")

    def test_unknown_replication_mode(self):
        """An unknown replication mode lists the valid ones."""
        self.check(
            GOOD.replace("secret = a-long-secret", "secret = a-long-secret\nreplication = eventually"),
            "cluster", "replication", "sync, async, batched",
        )

    def test_unknown_balancer_mode(self):
        """An unknown balancer mode is refused."""
        self.check(
            GOOD + "\n[balancer:lb1]\nlisten = 127.0.0.1:9000\nmode = magic\n",
            "balancer:lb1", "mode", "plugin, sticky",
        )

    def test_bad_duration(self):
        """A duration without a known unit is refused."""
        self.check(
            GOOD.replace("secret = a-long-secret", "secret = a-long-secret\nsession_timeout = 5 fortnights"),
            "cluster", "session_timeout", "duration",
        )

    def test_missing_cluster(self):
        """A file without [cluster] is refused."""
        self.check(GOOD.split("[node:s1]")[0].replace("[cluster]", "[node:s9]"), "cluster", None, "required")

    def test_no_nodes(self):
        """A cluster needs at least one node."""
        self.check(GOOD.split("[node:s1]")[0], "node:NAME", None, "at least one node")

    def test_balancer_on_unknown_node(self):
        """A balancer placed on a node that does not exist is refused."""
        self.check(
            GOOD + "\n[balancer:lb1]\nlisten = 127.0.0.1:9000\nnode = s7\n", "balancer:lb1", "node", "no [node:s7]"
        )

    def test_pinned_secondary_must_exist(self):
        """A pinned secondary must be another configured node."""
        self.check(GOOD.replace("rack = r1", "rack = r1\nsecondary = s1"), "node:s1", "secondary", "not another node")

    def test_app_needs_one_target(self):
        """An app section names exactly one of wsgi and resource."""
        self.check(GOOD + "\n[app:x]\nmount = /x\n", "app:x", "wsgi", "exactly one")

    def test_processes_and_runtime(self):
        """processes (balancer, DNS) and runtime are read; one process and this interpreter by default."""
        config = load(
            GOOD.replace("secret = a-long-secret", "secret = a-long-secret\nruntime = pypy3")
            + "\n[balancer:lb1]\nlisten = 127.0.0.1:9000\nprocesses = 2\n"
            + "\n[dns]\nlisten = 127.0.0.1:9053\nprocesses = 3\n"
        )
        self.assertEqual((config.cluster.runtime, config.balancers[0].processes, config.dns.processes), ("pypy3", 2, 3))
        default = load(GOOD + "\n[balancer:lb1]\nlisten = 127.0.0.1:9000\n")
        self.assertEqual((default.cluster.runtime, default.balancers[0].processes), (None, 1))

    def test_processes_must_be_counted(self):
        """processes is a whole number of at least 1."""
        self.check(GOOD + "\n[balancer:lb1]\nlisten = 127.0.0.1:9000\nprocesses = 0\n", "balancer:lb1", "processes", "at least 1")

    def test_one_process_for_a_witness_or_sticky(self):
        """A witness (one voter) and sticky mode (a learned table) cannot be spread over processes."""
        lb = GOOD + "\n[balancer:lb1]\nlisten = 127.0.0.1:9000\nprocesses = 2\n"
        self.check(lb + "witness = 127.0.0.1:9200\n", "balancer:lb1", "processes", "one voter")
        self.check(lb + "mode = sticky\n", "balancer:lb1", "processes", "per process")

    def test_partial_tls(self):
        """Replication TLS needs certificate, key and CA together."""
        self.check(
            GOOD.replace("secret = a-long-secret", "secret = a-long-secret\ntls_cert = a.pem"),
            "cluster", "tls_key", "together",
        )

    def test_dns_zone_must_contain_name(self):
        """The DNS zone must contain the cluster name."""
        self.check(GOOD + "\n[dns]\nlisten = 127.0.0.1:5300\nzone = other.test\n", "dns", "zone", "not inside")

    def test_unreadable_file(self):
        """A missing file is one line naming it."""
        with self.assertRaises(ConfigError) as caught:
            ClusterConfig.from_path("/nonexistent/cluster.ini")
        self.assertIn("/nonexistent/cluster.ini", str(caught.exception))


class StartupTests(SynchronousTestCase):
    def test_twistd_prints_one_line(self):
        """twistd appliance on a broken config exits 1 with one line naming file, section and key, no traceback."""
        path = os.path.abspath(self.mktemp() + ".ini")
        with open(path, "w") as f:
            f.write(GOOD.replace("rack = r1", "rack = r1\ncolour = blue"))
        proc = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
             "appliance", "--config", path],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(proc.returncode, 1)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        self.assertEqual(lines, [f"appliance: {path}: [node:s1] colour: unknown key"])
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)


class AppOptionTests(SynchronousTestCase):
    def test_threads_option(self):
        """A WSGI app runs in the thread pool unless threads = no; a resource never does and may not ask to."""
        app = "\n[app:x]\nmount = /x\n"
        self.assertTrue(load(GOOD + app + "wsgi = m:app\n").apps[0].threads)
        self.assertFalse(load(GOOD + app + "wsgi = m:app\nthreads = no\n").apps[0].threads)
        self.assertFalse(load(GOOD + app + "resource = m:r\n").apps[0].threads)
        self.assertFalse(load(GOOD + app + "resource = m:r\nthreads = no\n").apps[0].threads)
        with self.assertRaises(ConfigError) as caught:
            load(GOOD + app + "resource = m:r\nthreads = yes\n")
        self.assertEqual((caught.exception.section, caught.exception.key), ("app:x", "threads"))


class ClientSectionTests(SynchronousTestCase):
    """
    The client's sections: client ports and ids of nodes, client
    credentials and session services.
    """

    check = MistakeTests.check

    CLIENTS = GOOD.replace("rack = r1", "rack = r1\nclient = 127.0.0.1:9201") + (
        "\n[client:shop]\npassword = shop-password\n"
        "\n[service:cart]\nobject = appliance.demo.cart:Cart\nidempotent = items, total\n"
    )

    def test_client_sections_load(self):
        """Client ports, credentials and services come out as values."""
        config = load(self.CLIENTS)
        self.assertEqual(config.node("s1").client, Address("127.0.0.1", 9201))
        self.assertIsNone(config.node("s2").client)
        self.assertEqual([(c.name, c.password) for c in config.clients], [("shop", "shop-password")])
        [service] = config.services
        self.assertEqual((service.name, service.object, service.idempotent), ("cart", "appliance.demo.cart:Cart", ("items", "total")))

    def test_derived_ids_differ(self):
        """Without an id key each node's number is derived from the secret and its name."""
        ids = load(GOOD).node_ids
        self.assertNotEqual(ids["s1"], ids["s2"])
        other = load(GOOD.replace("a-long-secret", "another-long-secret")).node_ids
        self.assertNotEqual(ids["s1"], other["s1"])

    def test_configured_id(self):
        """An id key sets the node's number."""
        self.assertEqual(load(GOOD.replace("rack = r1", "rack = r1\nid = 12345")).node_ids["s1"], 12345)

    def test_id_out_of_range(self):
        """An id of zero or past 63 bits is refused."""
        self.check(GOOD.replace("rack = r1", "rack = r1\nid = 0"), "node:s1", "id", "2**63-1")
        self.check(GOOD.replace("rack = r1", "rack = r1\nid = %d" % 2**63), "node:s1", "id", "2**63-1")

    def test_colliding_sums_refused(self):
        """Two different pairs with the same sum stop startup with one line naming the nodes."""
        text = GOOD.replace("rack = r1", "rack = r1\nid = 1").replace("rack = r2", "rack = r2\nid = 10") + (
            "\n[node:s3]\nhttp = 127.0.0.1:9003\nreplication = 127.0.0.1:9103\nmachine = m3\nrack = r3\nid = 3\n"
            "\n[node:s4]\nhttp = 127.0.0.1:9004\nreplication = 127.0.0.1:9104\nmachine = m4\nrack = r4\nid = 8\n"
        )
        e = self.check(text, "node:s4", "id", "the summed identity of s3 + s4 equals that of s1 + s2")
        self.assertIn("another id", str(e))

    def test_lone_primary_equal_to_a_pair_refused(self):
        """A node whose number equals the sum of two others is refused."""
        text = GOOD.replace("rack = r1", "rack = r1\nid = 10").replace("rack = r2", "rack = r2\nid = 30") + (
            "\n[node:s3]\nhttp = 127.0.0.1:9003\nreplication = 127.0.0.1:9103\nmachine = m3\nrack = r3\nid = 40\n"
        )
        self.check(text, "node:s2", "id", "s1 + s2 equals that of s3")

    def test_client_port_clash(self):
        """A client port already used by another listener is named."""
        self.check(GOOD.replace("rack = r1", "rack = r1\nclient = 127.0.0.1:9101"), "node:s1", "client", "[node:s1] replication")

    def test_short_password(self):
        """A client password under 8 characters is refused."""
        self.check(GOOD + "\n[client:shop]\npassword = short\n", "client:shop", "password", "at least 8")

    def test_password_is_not_the_secret(self):
        """A client may not be given the cluster secret as its password."""
        self.check(GOOD + "\n[client:shop]\npassword = a-long-secret\n", "client:shop", "password", "cluster secret")

    def test_service_needs_object(self):
        """A service without an object is refused."""
        self.check(GOOD + "\n[service:cart]\nidempotent = items\n", "service:cart", "object", "is required")

    def test_bad_idempotent_name(self):
        """An idempotent entry that is not a public method name is refused."""
        self.check(GOOD + "\n[service:cart]\nobject = a.b:C\nidempotent = _secret\n", "service:cart", "idempotent", "not a method name")
