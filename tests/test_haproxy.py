"""
Behind a real sticky balancer: HAProxy (started here on loopback, with the
configuration the README documents) learns stickiness from the session
cookie; the primary is SIGKILLed; the session survives and HAProxy learns
the new primary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from .helpers import ROOT, RealNodes, free_ports, http, set_cookie_value, spawn, wait_for


def haproxy_config(port: int, nodes: RealNodes) -> str:
    with open(os.path.join(ROOT, "etc", "haproxy-sticky.cfg")) as f:
        text = f.read()
    text = text.replace("127.0.0.1:8090", f"127.0.0.1:{port}")
    for name, (http_port, _) in nodes.ports.items():
        text = text.replace(f"127.0.0.1:808{name[1:]}", f"127.0.0.1:{http_port}")
    return text


class HAProxyTests(SynchronousTestCase):
    def setUp(self):
        binary = shutil.which("haproxy")
        if binary is None:
            self.fail("haproxy is not installed (apt-get install haproxy): this test needs the real balancer")
        self.nodes = RealNodes(self)
        (self.port,) = free_ports(1)
        path = os.path.join(self.nodes.dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(haproxy_config(self.port, self.nodes))
        subprocess.run([binary, "-c", "-q", "-f", path], check=True, timeout=30)
        spawn(self, [binary, "-db", "-f", path], os.path.join(self.nodes.dir, "haproxy.log"))
        wait_for(lambda: http("GET", self.url("/cart"))[0] == 200, 20, "haproxy to answer")
        self.cookie = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method, path, data=None):
        cookie = f"APPSESSION={self.cookie}" if self.cookie else None
        status, headers, body = http(method, self.url(path), data, cookie)
        self.assertEqual(status, 200, body)
        self.cookie = set_cookie_value(headers) or self.cookie
        return json.loads(body)

    def test_session_survives_primary_death(self):
        """HAProxy sticks to the primary, redispatches when it dies, and re-learns the new primary."""
        self.request("POST", "/cart/items", {"item": "apple"})
        first = self.cookie
        for item in ("pear", "plum", "fig"):
            self.request("POST", "/cart/items", {"item": item})
            self.assertEqual(self.cookie, first, "HAProxy did not stick to the primary")
        sid, primary, secondary = first.split("!")
        self.nodes.kill(primary)
        items = self.request("GET", "/cart")["items"]
        self.assertEqual(items, ["apple", "pear", "plum", "fig"])
        new_sid, new_primary, _ = self.cookie.split("!")
        self.assertEqual(new_sid, sid)
        self.assertNotEqual(new_primary, primary)
        learned = self.cookie
        for item in ("kiwi", "lime"):
            self.request("POST", "/cart/items", {"item": item})
        self.assertEqual(self.cookie, learned, "HAProxy did not learn the new primary")
        self.assertEqual(self.request("GET", "/cart")["items"], ["apple", "pear", "plum", "fig", "kiwi", "lime"])
        owner = self.nodes.ports[new_primary][0]
        h = json.loads(http("GET", f"http://127.0.0.1:{owner}/_appliance/health")[2])
        self.assertEqual(h["primaries"], 1)
