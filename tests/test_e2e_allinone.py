"""
The all-in-one, end to end, as a user runs it: `twistd -n appliance` on a
config like the shipped one (free loopback ports), every session server in a
supervised child process.  Fill a cart through the balancer, SIGKILL the
primary's process, and the cart is still there under a new primary; the
supervisor restarts the dead server; DNS answers with the balancer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import dns.resolver
from twisted.trial.unittest import SynchronousTestCase

from .helpers import cluster_ini, free_ports, health, http, set_cookie_value, spawn, twistd, wait_for, write


class AllInOneTests(SynchronousTestCase):
    def setUp(self):
        self.lb_port, self.dns_port = free_ports(2)
        balancer = f"\n[balancer:lb1]\nlisten = 127.0.0.1:{self.lb_port}\nhealth_interval = 250ms\n"
        dns_section = f"\n[dns]\nlisten = 127.0.0.1:{self.dns_port}\nttl = 1\ncheck_interval = 500ms\n"
        text, self.ports = cluster_ini(balancer=balancer, dns=dns_section)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        config = write(os.path.join(self.dir, "cluster.ini"), text)
        self.proc = spawn(self, twistd("--config", config), os.path.join(self.dir, "appliance.log"))
        for name, (http_port, _) in self.ports.items():
            others = [n for n in self.ports if n != name]
            wait_for(
                lambda: (health(http_port) or {}).get("status") == "ok"
                and all((health(http_port) or {}).get("peers", {}).get(o) for o in others),
                60, f"{name} up and holding its lease",
            )
        wait_for(lambda: http("GET", self.url("/cart"))[0] == 200, 30, "the balancer")
        self.cookie = None

    def url(self, path):
        return f"http://127.0.0.1:{self.lb_port}{path}"

    def request(self, method, path, data=None):
        status, headers, body = http(method, self.url(path), data, f"APPSESSION={self.cookie}" if self.cookie else None)
        self.assertEqual(status, 200, body)
        self.cookie = set_cookie_value(headers) or self.cookie
        return json.loads(body)

    def test_cart_survives_kill_of_primary(self):
        """Items added through the balancer survive SIGKILL of the primary's process; the cookie names a new primary."""
        for item in ("apple", "pear", "plum"):
            self.request("POST", "/cart/items", {"item": item})
        sid, primary, secondary = self.cookie.split("!")
        self.assertTrue(primary and secondary and primary != secondary)
        pid = health(self.ports[primary][0])["pid"]
        self.assertNotEqual(pid, self.proc.pid)
        os.kill(pid, 9)
        items = self.request("GET", "/cart")["items"]
        self.assertEqual(items, ["apple", "pear", "plum"])
        new_sid, new_primary, new_secondary = self.cookie.split("!")
        self.assertEqual(new_sid, sid)
        self.assertNotEqual(new_primary, primary)
        self.assertTrue(new_secondary)
        self.assertEqual(self.request("POST", "/cart/items", {"item": "kiwi"}), ["apple", "pear", "plum", "kiwi"])
        restarted = wait_for(lambda: (health(self.ports[primary][0]) or {}).get("pid") not in (None, pid), 30, "restart")
        self.assertTrue(restarted)
        self.assertIsNone(self.proc.poll())

    def test_dns_answers_with_balancer(self):
        """The all-in-one's DNS responder answers the cluster name with the balancer, to dig and dnspython."""
        dig = shutil.which("dig")
        if dig is None:
            self.fail("dig is not installed (apt-get install dnsutils)")
        out = subprocess.run(
            [dig, "+short", "+time=2", "+tries=2", "-p", str(self.dns_port), "@127.0.0.1", "app.cluster.test", "A"],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(out.stdout.split(), ["127.0.0.1"])
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.dns_port
        answer = resolver.resolve("_http._tcp.app.cluster.test", "SRV", tcp=True, lifetime=5)
        self.assertEqual([r.port for r in answer], [self.lb_port])

    def test_logout_everywhere(self):
        """Logout through the balancer removes the session from primary and secondary."""
        self.request("POST", "/cart/items", {"item": "apple"})
        _, primary, secondary = self.cookie.split("!")
        self.request("POST", "/cart/logout")
        self.assertEqual(health(self.ports[primary][0])["sessions"], 0)
        wait_for(lambda: health(self.ports[secondary][0])["sessions"] == 0, 10, "backup removed")
