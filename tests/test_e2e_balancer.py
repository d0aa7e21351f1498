"""
The balancer and the DNS responder as real processes in front of real
session servers, deployed the multi-host way (`--node NAME --roles ...`):
both balancer modes survive a dead primary and take back a server that
returns; DNS drops a dead balancer from its answers and brings it back.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from .helpers import RealNodes, free_ports, http, set_cookie_value, wait_for


def balancers(lb1, lb2, dns_port):
    text = f"""
[balancer:lb1]
listen = 127.0.0.1:{lb1}
mode = plugin
node = s1
health_interval = 200ms
health_rise = 1
down_time = 1s

[balancer:lb2]
listen = 127.0.0.2:{lb2}
mode = sticky
node = s2
health_interval = 200ms
health_rise = 1
down_time = 1s
"""
    dns = f"""
[dns]
listen = 127.0.0.1:{dns_port}
ttl = 1
check_interval = 500ms
node = s1
"""
    return text, dns


class BalancerEndToEndTests(SynchronousTestCase):
    def setUp(self):
        self.lb1, self.lb2, self.dns_port = free_ports(3)
        text, dns = balancers(self.lb1, self.lb2, self.dns_port)
        self.nodes = RealNodes(self, balancer=text, dns=dns)
        self.nodes.start("s1", "dns,balancer")
        self.nodes.start("s2", "balancer")
        for host, port in (("127.0.0.1", self.lb1), ("127.0.0.2", self.lb2)):
            wait_for(lambda: http("GET", f"http://{host}:{port}/_appliance/lb-health")[0] == 200, 30, "balancer")
        self.cookie = None

    def request(self, base, method, path, data=None):
        status, headers, body = http(method, base + path, data, f"APPSESSION={self.cookie}" if self.cookie else None)
        self.assertEqual(status, 200, body)
        self.cookie = set_cookie_value(headers) or self.cookie
        return json.loads(body)

    def survive(self, base):
        for item in ("apple", "pear", "plum"):
            self.request(base, "POST", "/cart/items", {"item": item})
        sid, primary, _ = self.cookie.split("!")
        self.nodes.kill(primary)
        self.assertEqual(self.request(base, "GET", "/cart")["items"], ["apple", "pear", "plum"])
        new_sid, new_primary, _ = self.cookie.split("!")
        self.assertEqual(new_sid, sid)
        self.assertNotEqual(new_primary, primary)
        self.assertEqual(self.request(base, "POST", "/cart/items", {"item": "fig"}), ["apple", "pear", "plum", "fig"])
        self.assertEqual(self.cookie.split("!")[1], new_primary)
        return primary

    def comes_back(self, base, name):
        self.nodes.start(name)
        self.nodes.wait_linked(name)

        def placed_there():
            self.cookie = None
            self.request(base, "POST", "/cart/items", {"item": "new"})
            return self.cookie.split("!")[1] == name

        wait_for(placed_there, 20, f"{name} to take new sessions again")

    def test_plugin_mode(self):
        """Plugin mode: the cart survives SIGKILL of the primary, and the server rejoins when it returns."""
        base = f"http://127.0.0.1:{self.lb1}"
        dead = self.survive(base)
        self.comes_back(base, dead)

    def test_sticky_mode(self):
        """Sticky mode: the balancer re-learns the new primary after the old one dies, and takes it back later."""
        base = f"http://127.0.0.2:{self.lb2}"
        dead = self.survive(base)
        self.comes_back(base, dead)

    def test_dns_follows_balancer_health(self):
        """DNS answers with both live balancers, drops one whose process died, and returns it when it is back."""
        dig = shutil.which("dig")
        if dig is None:
            self.fail("dig is not installed (apt-get install dnsutils)")

        def answer():
            out = subprocess.run(
                [dig, "+short", "+time=1", "+tries=1", "-p", str(self.dns_port), "@127.0.0.1", "app.cluster.test"],
                capture_output=True, text=True, timeout=10,
            )
            return sorted(out.stdout.split())

        wait_for(lambda: answer() == ["127.0.0.1", "127.0.0.2"], 10, "both balancers")
        self.nodes.procs.pop("s2-balancer").kill()
        wait_for(lambda: answer() == ["127.0.0.1"], 5, "the dead balancer to leave")
        self.nodes.start("s2", "balancer")
        wait_for(lambda: answer() == ["127.0.0.1", "127.0.0.2"], 10, "the balancer to return")
