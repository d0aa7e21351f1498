"""
Join and rebalance end to end: three session servers and a balancer as
real processes, sessions created through the balancer, one server
restarted (after kill -9, and after SIGTERM) under continuous writes; it
gets its share of backups and primaries back, and no acknowledged write is
lost on the way.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from .helpers import cluster_ini, free_ports, health, http, set_cookie_value, spawn, twistd, wait_for, write
from .test_e2e_drain import BALANCER, Writers

NAMES = ("s1", "s2", "s3")
SESSIONS = 240
WRITERS = 4
#: Sessions held in all (the writers' included), and the least and most a
#: server holds of primaries and of backups in an even spread (within 10 %).
TOTAL = SESSIONS + WRITERS
FLOOR, CEILING = 0.9 * TOTAL / 3, 1.1 * TOTAL / 3


class RebalanceEndToEndTests(SynchronousTestCase):
    def setUp(self):
        (lb,) = free_ports(1)
        text, self.ports = cluster_ini(
            NAMES, "sync", "rebalance_rate = 400/s\ndrain_timeout = 15s",
            balancer=BALANCER.format(port=lb, mode="plugin") + "new_session_rate = 0\n",
        )
        # One rack: every server is as far from the others, so an even
        # spread is what the placement rule asks for.
        text = re.sub(r"(?m)^rack = r\d+$", "rack = r1", text)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = write(os.path.join(self.dir, "cluster.ini"), text)
        self.procs = {}
        for name in NAMES:
            self.start(name)
        self.start("s1", "balancer")
        for name in NAMES:
            self.wait_linked(name)
        self.base = f"http://127.0.0.1:{lb}"
        wait_for(lambda: http("GET", self.base + "/_appliance/lb-health")[0] == 200, 30, "balancer")

    def start(self, name, roles="server"):
        key = name if roles == "server" else f"{name}-{roles}"
        argv = twistd("--config", self.config, "--node", name, "--roles", roles)
        self.procs[key] = spawn(self, argv, os.path.join(self.dir, f"{key}.log"))

    def wait_linked(self, name):
        others = [n for n in NAMES if n != name]

        def linked():
            h = health(self.ports[name][0])
            return h is not None and h["status"] == "ok" and all(h["peers"].get(o) for o in others)

        wait_for(linked, 30, f"{name} to link to {others}")

    def counts(self):
        out = {}
        for name in NAMES:
            try:
                h = health(self.ports[name][0]) or {}
            except OSError:
                # Down (restarting): it holds nothing.
                h = {}
            out[name] = (h.get("primaries", 0), h.get("sessions", 0) - h.get("primaries", 0))
        return out

    def create(self):
        cookies = []
        for i in range(SESSIONS):
            status, headers, body = http("POST", self.base + "/cart/items", {"item": f"first{i}"})
            self.assertEqual(status, 200, body)
            cookies.append(set_cookie_value(headers))
        return cookies

    def restart(self, name, signal):
        proc = self.procs.pop(name)
        if signal == "kill":
            proc.kill()
        else:
            proc.terminate()
        proc.wait(30)
        # Its sessions are everyone else's now (promoted, or handed over).
        wait_for(lambda: sum(p for p, _ in self.counts().values()) >= SESSIONS, 30, "failover")
        self.start(name)
        # It comes back empty and must gain its share; the others start
        # sending it backups as soon as they link to it, so by the time
        # this test sees it linked it may hold some already (44 in one CI
        # run): its first answer holds less than the even spread's floor.
        first = wait_for(lambda: health(self.ports[name][0]), 30, f"{name} to answer")
        self.assertTrue(first["primaries"] < FLOOR and first["sessions"] - first["primaries"] < FLOOR, first)
        self.wait_linked(name)

    def check(self, signal):
        cookies = self.create()
        writers = Writers(self.base, WRITERS)
        writers.start()
        self.addCleanup(writers.finish)
        wait_for(lambda: writers.writes() >= 20, 30, "writes")
        self.restart("s3", signal)

        def even():
            counts = self.counts()
            return all(FLOOR <= p <= CEILING and FLOOR <= b <= CEILING for p, b in counts.values())

        wait_for(even, 60, f"an even spread (now {self.counts()})")
        before = writers.writes()
        wait_for(lambda: writers.writes() >= before + 20, 30, "writes after the rebalance")
        writers.finish()
        self.assertEqual(writers.lost(), [])
        if signal == "term":
            self.assertEqual(writers.errors, [])
        followed = 0
        for i, value in enumerate(cookies):
            status, headers, body = http("GET", self.base + "/cart", cookie=f"APPSESSION={value}", timeout=10.0)
            self.assertEqual(status, 200, body)
            self.assertIn(f"first{i}", body.decode() if isinstance(body, bytes) else body)
            new = set_cookie_value(headers) or value
            if new.split("!")[1] == "s3" != value.split("!")[1]:
                followed += 1
        # Sessions whose primary moved to s3 are served with their first
        # cookie, which names another primary, and the answer names s3.
        self.assertGreater(followed, 0)
        with open(os.path.join(self.dir, "s1.log"), errors="replace") as f:
            self.assertIn("rebalance:", f.read())

    def test_after_kill(self):
        """After kill -9 and a restart, the server gets a third of the primaries and backups back within 10 %; no acknowledged write is lost."""
        self.check("kill")

    def test_after_sigterm(self):
        """After SIGTERM (a drain) and a restart, the server gets its third back; no error answer, no acknowledged write lost."""
        self.check("term")
