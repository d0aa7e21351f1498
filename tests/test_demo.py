"""
The demo page at C{/}: served by a session server in memory with the
endpoints its script calls, and end to end on the shipped etc/cluster.ini
(free ports): through the balancer in headless Chromium, and across a
kill -9 of the session's primary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from appliance.config import ClusterConfig
from appliance.demo import page

from .helpers import cluster_ini, free_ports, http, session_call, shipped_on_free_ports, spawn, twistd, wait_for, write
from .memory_http import exchange, request, responses
from .test_hosting_edges import memory_site

DEMO = """
[app:demo]
mount = /
wsgi = appliance.demo.page:app
threads = no
"""


def _cluster(extra: str = "") -> ClusterConfig:
    text, _ = cluster_ini(names=("s1",), apps=DEMO + extra)
    return ClusterConfig.from_string(text.replace("wsgi = appliance.demo.cart:app", "wsgi = appliance.demo.cart:app\nthreads = no"))


class PageTests(SynchronousTestCase):
    def setUp(self):
        self.site, self.node = memory_site(_cluster())
        self.cookie = None

    def one(self, method, path, body=b"", form=False):
        headers = []
        if self.cookie:
            headers.append(f"Cookie: APPSESSION={self.cookie}")
        if form:
            headers.append("Content-Type: application/x-www-form-urlencoded")
        (response,) = responses(exchange(self.site, request(method, path, body, tuple(headers))))
        for value in response[1].get(b"set-cookie", []):
            self.cookie = value.split(b";")[0].split(b"=", 1)[1].decode() or None
        return response

    def test_root_is_the_page(self):
        """GET / answers the self-contained HTML page; nothing is fetched from another origin."""
        code, headers, body = self.one("GET", "/")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"content-type"], [b"text/html; charset=utf-8"])
        text = body.decode()
        self.assertIn("<title>appliance demo cart</title>", text)
        self.assertNotRegex(text, r"(src|href)=\"(https?:)?//")
        self.assertIn(b"connect-src 'self'", headers[b"content-security-policy"][0])
        self.assertIsNone(self.cookie, "showing the page creates no session")
        self.assertEqual(len(self.node.store), 0)

    def test_only_the_root(self):
        """mount = / serves the root path alone: other paths stay 404, other methods 405."""
        self.assertEqual(self.one("GET", "/nothing")[0], 404)
        code, headers, _ = self.one("POST", "/")
        self.assertEqual((code, headers[b"allow"]), (405, [b"GET, HEAD"]))

    def test_script_calls_work(self):
        """Every endpoint the page's script calls answers it: route, list, add, remove, log out."""
        script = self.one("GET", "/")[2].decode()
        called = set(re.findall(r'call\("(GET|POST|DELETE)", "(/cart[a-z/]*)"', script))
        self.assertEqual(
            called,
            {("GET", "/cart/route"), ("GET", "/cart"), ("POST", "/cart/items"), ("DELETE", "/cart/items/"), ("POST", "/cart/logout")},
        )
        code, _, body = self.one("GET", "/cart/route")
        self.assertEqual((code, json.loads(body)), (200, {"node": "s1", "primary": None, "secondary": None}))
        code, _, body = self.one("POST", "/cart/items", b"item=green+tea", form=True)
        self.assertEqual((code, json.loads(body)), (200, ["green tea"]))
        self.assertEqual(json.loads(self.one("GET", "/cart/route")[2]), {"node": "s1", "primary": "s1", "secondary": None})
        self.assertEqual(json.loads(self.one("GET", "/cart")[2]), {"items": ["green tea"]})
        code, _, body = self.one("DELETE", "/cart/items/green%20tea")
        self.assertEqual((code, json.loads(body)), (200, []))
        self.assertEqual(self.one("POST", "/cart/logout")[0], 200)
        self.assertIsNone(self.cookie)
        self.assertEqual(len(self.node.store), 0)

    def test_route_never_shows_the_sid(self):
        """The route answer names nodes only: the HttpOnly cookie's sid stays out of scripts' reach."""
        self.one("POST", "/cart/items", b"item=apple", form=True)
        sid = self.cookie.split("!")[0]
        self.assertNotIn(sid.encode(), self.one("GET", "/cart/route")[2])

    def test_status_link_from_config(self):
        """The page links to the status page of a balancer's admin listener, else the supervisor's, else the node's."""
        text, ports = cluster_ini(names=("s1", "s2"), apps=DEMO)
        admin = free_ports(3)
        node = text.replace(f"http = 127.0.0.1:{ports['s1'][0]}", f"http = 127.0.0.1:{ports['s1'][0]}\nadmin = 127.0.0.1:{admin[0]}")
        lb = f"\n[balancer:lb1]\nlisten = 127.0.0.1:{admin[1]}\nadmin = 127.0.0.1:{admin[2]}\n"
        self.assertIsNone(page.status_url(ClusterConfig.from_string(text), "s1"))
        self.assertIn("no admin listener is configured", page.render(ClusterConfig.from_string(text), "s1").decode())
        self.assertEqual(page.status_url(ClusterConfig.from_string(node), "s1"), f"http://127.0.0.1:{admin[0]}/_appliance/status")
        self.assertIsNone(page.status_url(ClusterConfig.from_string(node), "s2"))
        cluster = ClusterConfig.from_string(node + lb)
        url = f"http://127.0.0.1:{admin[2]}/_appliance/status"
        self.assertEqual(page.status_url(cluster, "s2"), url)
        self.assertIn(f'<a id="status" href="{url}">cluster status</a>', page.render(cluster, "s2").decode())


class ShippedClusterTests(SynchronousTestCase):
    """
    The shipped etc/cluster.ini, every address moved to a free port, run as
    the user runs it (twistd -n appliance).
    """

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        text, self.moved = shipped_on_free_ports()
        config = write(os.path.join(self.dir, "cluster.ini"), text)
        self.cluster = ClusterConfig.from_path(config)
        self.lb = self.cluster.balancers[0].listen
        self.proc = spawn(self, twistd("--config", config), os.path.join(self.dir, "appliance.log"))
        for node in self.cluster.nodes:
            wait_for(lambda: self.node_health(node.name).get("status") == "ok"
                     and all(self.node_health(node.name)["peers"].values())
                     and len(self.node_health(node.name)["peers"]) == 2, 60, f"{node.name} linked")
        wait_for(lambda: http("GET", self.url("/"))[0] == 200, 30, "the page through the balancer")
        self.cookie = None

    def node_health(self, name):
        address = self.cluster.node(name).http
        status, _, body = http("GET", f"http://{address}/_appliance/health", timeout=1.0)
        return json.loads(body) if status == 200 else {}

    def url(self, path):
        return f"http://{self.lb}{path}"

    def call(self, method, path, data=None):
        status, body, self.cookie = session_call(method, self.url(path), self.cookie, data)
        self.assertEqual(status, 200, body)
        return body

    def test_page_runs_in_chromium(self):
        """Headless Chromium loads / through the balancer and the script fills in the serving node."""
        chromium = shutil.which("chromium")
        if chromium is None:
            self.fail("chromium is not installed (apt-get install chromium)")
        profile = os.path.join(self.dir, "profile")
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", self.url("/")],
            capture_output=True, text=True, timeout=90,
        )
        node = re.search(r'<td id="node" class="node">([^<]*)</td>', done.stdout)
        self.assertIsNotNone(node, done.stdout[-2000:] + done.stderr[-2000:])
        self.assertIn(node.group(1), self.cluster.node_names)
        self.assertIn('<p id="count">0 items</p>', done.stdout)
        self.assertIn('<p id="error"></p>', done.stdout)

    def test_tour_through_the_page_calls(self):
        """The calls the page makes show the primary and secondary, and a new route after kill -9 of the primary."""
        shown = http("GET", self.url("/"))[2].decode()
        self.assertIn("Demo cart on app.cluster.test", shown)
        self.assertIn(f'href="http://{self.cluster.balancers[0].admin}/_appliance/status"', shown)
        self.call("POST", "/cart/items", {"item": "apple"})
        self.call("POST", "/cart/items", {"item": "pear"})
        where = self.call("GET", "/cart/route")
        primary, secondary = where["primary"], where["secondary"]
        self.assertEqual(where["node"], primary)
        self.assertTrue(secondary and secondary != primary)
        os.kill(self.node_health(primary)["pid"], 9)
        self.assertEqual(self.call("GET", "/cart")["items"], ["apple", "pear"])
        after = self.call("GET", "/cart/route")
        self.assertNotEqual(after["primary"], primary)
        self.assertEqual(after["node"], after["primary"])
        self.assertTrue(after["secondary"])
