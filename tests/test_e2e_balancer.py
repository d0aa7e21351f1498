"""
The balancer and the DNS responder as real processes in front of real
session servers, deployed the multi-host way (`--node NAME --roles ...`):
both balancer modes survive a dead primary and take back a server that
returns; DNS drops a dead balancer from its answers and brings it back.
"""

from __future__ import annotations

import http.client as http_client
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


CRASH_APP = """
[app:crash]
mount = /crash
resource = tests.apps:crash
"""


class DiesMidResponseTests(SynchronousTestCase):
    """
    A real session server dies after sending part of its response: a POST
    is not retried (502), a GET is retried on the secondary.
    """

    def setUp(self):
        (self.lb,) = free_ports(1)
        balancer = f"\n[balancer:lb1]\nlisten = 127.0.0.1:{self.lb}\nnode = s1\nhealth_interval = 200ms\n"
        self.nodes = RealNodes(self, balancer=balancer, apps=CRASH_APP)
        self.nodes.start("s1", "balancer")
        self.base = f"http://127.0.0.1:{self.lb}"
        wait_for(lambda: http("GET", self.base + "/_appliance/lb-health")[0] == 200, 30, "balancer")
        status, headers, body = http("GET", self.base + "/crash")
        self.assertEqual(status, 200, body)
        self.cookie = set_cookie_value(headers)
        _, self.primary, self.secondary = self.cookie.split("!")
        self.target = self.nodes.ports[self.primary][0]

    def test_post_not_retried(self):
        """A POST whose server died after reading it gets 502 and is never sent to another server."""
        url = f"{self.base}/crash?port={self.target}&stage=head"
        status, _, _ = http("POST", url, {"x": "1"}, f"APPSESSION={self.cookie}")
        self.assertEqual(status, 502)
        self.assertEqual(self.served(), 2, "the POST reached a second server")

    def test_get_retried(self):
        """A GET whose server died mid-response is retried on the secondary, which serves the session."""
        url = f"{self.base}/crash?port={self.target}&stage=head"
        status, headers, body = http("GET", url, cookie=f"APPSESSION={self.cookie}")
        self.assertEqual(status, 200, body)
        reply = json.loads(body)
        self.assertEqual((reply["served"], reply["port"]), (2, self.nodes.ports[self.secondary][0]))
        self.assertEqual(set_cookie_value(headers).split("!")[1], self.secondary)

    def test_cut_after_response_started(self):
        """Once part of the response reached the client, a dying server cuts the client off: no retry, no 502."""
        url = f"{self.base}/crash?port={self.target}&stage=body"
        with self.assertRaises(http_client.IncompleteRead):
            http("POST", url, {"x": "1"}, f"APPSESSION={self.cookie}")
        self.assertEqual(self.served(), 2, "the POST reached a second server")

    def served(self):
        status, _, body = http("GET", self.base + "/crash", cookie=f"APPSESSION={self.cookie}")
        self.assertEqual(status, 200, body)
        return json.loads(body)["served"]
