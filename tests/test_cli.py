"""
The operator's command line, C{python -m appliance}, against a running
cluster (real processes): status (healthy, then a killed node), a node's
sessions, one session's metadata and its end, a drain; exit codes and
C{--json}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from .admin_cluster import AdminCluster
from .helpers import ROOT, cluster_ini, free_ports, write


def cli(config, *args, timeout=60):
    done = subprocess.run([sys.executable, "-m", "appliance", "--config", config, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


class UsageTests(SynchronousTestCase):
    def test_usage(self):
        """A command that does not exist, or a missing node name, exits 2."""
        self.assertEqual(cli("etc/cluster.ini", "bogus")[0], 2)
        self.assertEqual(cli("etc/cluster.ini", "drain")[0], 2)

    def test_bad_config(self):
        """A config that does not load exits 2 with its one line."""
        code, out, err = cli("no/such.ini", "status")
        self.assertEqual((code, err), (2, "appliance: no/such.ini: cannot read: No such file or directory\n"))

    def test_unreachable(self):
        """No admin listener answering exits 2 naming each one tried."""
        port, = free_ports(1)
        text, _ = cluster_ini(extra=f"admin = {port}")
        config = write(os.path.abspath(self.mktemp()) + ".ini", text)
        code, out, err = cli(config, "status")
        self.assertEqual(code, 2)
        self.assertIn(f"[cluster] 127.0.0.1:{port}", err)

    def test_no_such_node(self):
        """sessions or drain of a node not in the config exits 2."""
        code, _, err = cli("etc/cluster.ini", "drain", "s9")
        self.assertEqual((code, err), (2, "appliance: no [node:s9] in etc/cluster.ini\n"))


class ClusterCliTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = AdminCluster(self)
        self.config = self.cluster.config

    def test_status(self):
        """status exits 0 with every process up, then 1 once a node is killed, in text and JSON."""
        code, out, err = cli(self.config, "status")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("cluster app.cluster.test (asked balancer:lb1)"), out)
        self.assertEqual([line.split()[:2] for line in lines if line.startswith("s")], [["s1", "up"], ["s2", "up"], ["s3", "up"]])
        self.assertIn("lb1", out)
        self.cluster.kill("s3")
        code, out, err = cli(self.config, "--json", "status")
        self.assertEqual(code, 1, err)
        states = {s["section"]: s["state"] for s in json.loads(out)["sections"]}
        self.assertEqual(states, {"node:s1": "up", "node:s2": "up", "node:s3": "down", "balancer:lb1": "up", "dns": "up"})
        code, out, _ = cli(self.config, "status")
        self.assertIn("down", [line.split()[1] for line in out.splitlines() if line.startswith("s3")])

    def test_sessions(self):
        """sessions NODE lists the count; --sid shows one session; --end ends it on both copies."""
        c = self.cluster
        _, cookie = c.cart("apple")
        sid, primary, secondary = cookie.split("!")
        code, out, err = cli(self.config, "--json", "sessions", primary)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["count"], 1)
        code, out, _ = cli(self.config, "sessions", primary, "--sid", sid)
        self.assertEqual(code, 0)
        self.assertIn(f"secondary           {secondary}", out.splitlines())
        code, out, _ = cli(self.config, "sessions", primary, "--end", sid)
        self.assertEqual((code, out), (0, f"ended {sid} on both copies\n"))
        self.assertEqual(cli(self.config, "sessions", secondary, "--sid", sid)[0], 1)
        self.assertEqual(cli(self.config, "sessions", primary, "--end", sid)[0], 1)

    def test_drain(self):
        """drain NODE exits 0 once its primaries are handed over; the status then says draining (exit 1)."""
        c = self.cluster
        cookies = [c.cart(f"item{i}")[1] for i in range(4)]
        code, out, err = cli(self.config, "drain", "s1")
        self.assertEqual(code, 0, err + out)
        self.assertIn("s1 drained:", out)
        code, out, _ = cli(self.config, "--json", "status")
        self.assertEqual(code, 1)
        self.assertEqual({s["section"]: s["state"] for s in json.loads(out)["sections"]}["node:s1"], "draining")
        for i, cookie in enumerate(cookies):
            self.assertEqual(c.cart(cookie=cookie)[0], [f"item{i}"])

    def test_reload(self):
        """reload has each process re-read the file once (exit 0); an edit it refuses exits 1 with the one-line error."""
        text = open(self.config).read()
        with open(self.config, "w") as f:
            f.write(text.replace("[cluster]\n", "[cluster]\nmax_sessions = 5000\n", 1))
        code, out, err = cli(self.config, "reload")
        self.assertEqual(code, 0, err + out)
        self.assertEqual(sorted(out.splitlines()),
                         ["[dns] tunables: [cluster] max_sessions", "[node:s2] tunables: [cluster] max_sessions",
                          "[node:s3] tunables: [cluster] max_sessions"])
        with open(self.config, "w") as f:
            f.write(text.replace("cookie = APPSESSION", "cookie = OTHER", 1))
        code, out, err = cli(self.config, "--json", "reload")
        self.assertEqual(code, 1)
        answers = json.loads(out)
        self.assertEqual(set(answers), {"dns", "node:s2", "node:s3"})
        self.assertIn("[cluster] cookie: cannot change while running", answers["node:s2"]["error"])


class TokenTests(SynchronousTestCase):
    def test_token(self):
        """With admin_token every listener refuses a request without it (401) and the CLI, reading it from the config, gets through."""
        cluster = AdminCluster(self, extra="admin_token = a-token-of-16-chars-or-more\n", credential="a-token-of-16-chars-or-more")
        import urllib.error
        import urllib.request

        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(cluster.url("node:s1", "/status.json"), timeout=10)
        self.assertEqual(e.exception.code, 401)
        code, out, err = cli(cluster.config, "--json", "status")
        self.assertEqual(code, 0, err)
        self.assertEqual({s["state"] for s in json.loads(out)["sections"]}, {"up"})
