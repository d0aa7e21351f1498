"""
Pauses with real processes on loopback: three session servers and a witness
balancer, the primary SIGSTOPped.  Requests stop waiting on it once the
witness finds it silent, its sessions move to their secondaries once it is
voted dead, and when it resumes it serves nothing stale.
"""

from __future__ import annotations

import json
import os
import signal
import time

from twisted.trial.unittest import SynchronousTestCase

from .helpers import RealNodes, free_ports, health, http, set_cookie_value, wait_for


class PauseTests(SynchronousTestCase):
    def setUp(self):
        self.lb, self.witness = free_ports(2)
        balancer = f"""
[balancer:lb1]
listen = 127.0.0.1:{self.lb}
witness = 127.0.0.1:{self.witness}
node = s1
"""
        self.nodes = RealNodes(self, balancer=balancer)
        self.nodes.start("s1", "balancer")
        wait_for(lambda: http("GET", f"http://127.0.0.1:{self.lb}/_appliance/lb-health")[0] == 200, 30, "balancer")
        for name in ("s1", "s2", "s3"):
            wait_for(lambda: health(self.nodes.ports[name][0])["witnesses"].get("lb1"), 30, f"{name} to reach the witness")
        self.cookie = None
        for item in ("apple", "pear"):
            self.post(item)
        self.sid, self.primary, self.secondary = self.cookie.split("!")

    def post(self, item, timeout=10.0):
        status, headers, body = http(
            "POST", f"http://127.0.0.1:{self.lb}/cart/items", {"item": item}, f"APPSESSION={self.cookie}" if self.cookie else None,
            timeout=timeout,
        )
        if status == 200:
            self.cookie = set_cookie_value(headers) or self.cookie
        return status, body

    def cart(self):
        status, headers, body = http("GET", f"http://127.0.0.1:{self.lb}/cart", cookie=f"APPSESSION={self.cookie}", timeout=10.0)
        if status == 200:
            self.cookie = set_cookie_value(headers) or self.cookie
        return status, body

    def pause(self, name):
        pid = self.nodes.procs[name].pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: os.kill(pid, signal.SIGCONT) if self.nodes.procs.get(name) else None)
        return pid

    def test_paused_primary_is_replaced_and_resumes_empty(self):
        """With the primary paused, a POST to it is answered well before the 30 s response timeout, the secondary serves the whole cart, and the resumed primary serves nothing stale."""
        old = health(self.nodes.ports[self.primary][0])["incarnation"]
        pid = self.pause(self.primary)
        started = time.monotonic()
        status, body = self.post("plum")
        self.assertLess(time.monotonic() - started, 10.0)
        self.assertIn(status, (200, 502, 503), body)

        def served():
            status, body = self.cart()
            return status == 200 and json.loads(body)["items"]

        items = wait_for(served, 15, "the secondary to serve the session")
        self.assertEqual(items[:2], ["apple", "pear"])
        self.assertNotEqual(self.cookie.split("!")[1], self.primary)
        self.assertEqual(self.post("fig")[0], 200)
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: health(self.nodes.ports[self.primary][0])["incarnation"] != old, 15, "a new incarnation")
        direct = http(
            "GET", self.nodes.url(self.primary, "/cart"), cookie=f"APPSESSION={self.sid}!{self.primary}!{self.secondary}"
        )
        if direct[0] == 200:
            self.assertEqual(json.loads(direct[2])["items"][-1], "fig")
        else:
            self.assertEqual(direct[0], 503)
