"""
The balancer as a real process in front of real session servers, with the
clients people use (issue 9): the HTTPS cart flow with curl and with
headless Chromium (both offer ALPN), and a request carrying two session
cookies, read the same way by the balancer and the servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from .certs import make_ca, make_leaf
from .helpers import SKIP_TLS_ON_PYPY, RealNodes, free_ports, http, set_cookie_value, wait_for

SHOP = """
[app:shop]
mount = /shop
wsgi = tests.browser_app:page
threads = no
"""


def tool(case: SynchronousTestCase, name: str) -> str:
    path = shutil.which(name)
    if path is None:
        case.fail(f"{name} is not installed (apt-get install {name}): this test needs the real client")
    return path


class EndToEndTests(SynchronousTestCase):
    def start(self, https: bool) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.http_port, self.https_port = free_ports(2)
        balancer = f"\n[balancer:lb1]\nlisten = 127.0.0.1:{self.http_port}\nnode = s1\nhealth_interval = 200ms\n"
        if https:
            ca = make_ca(self.dir)
            self.ca = ca[2]
            cert, key = make_leaf(self.dir, ca, "lb")
            balancer += f"https = 127.0.0.1:{self.https_port}\ntls_cert = {cert}\ntls_key = {key}\n"
        self.nodes = RealNodes(self, names=("s1", "s2"), balancer=balancer, apps=SHOP)
        self.nodes.start("s1", "balancer")
        self.base = f"http://127.0.0.1:{self.http_port}"
        wait_for(lambda: http("GET", self.base + "/_appliance/lb-health")[0] == 200, 30, "the balancer")

    def curl(self, *args) -> str:
        argv = [tool(self, "curl"), "--silent", "--show-error", "--max-time", "10", "--cacert", self.ca, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def test_curl_cart_over_https(self):
        """curl (offering h2 and http/1.1 by ALPN) fills and reads the cart over HTTPS; the session cookie is Secure."""
        self.start(https=True)
        jar = os.path.join(self.dir, "jar")
        url = f"https://127.0.0.1:{self.https_port}"
        for item in ("apple", "pear"):
            self.curl("-c", jar, "-b", jar, "-d", f"item={item}", url + "/cart/items")
        out = self.curl("-c", jar, "-b", jar, "-w", "\\n%{http_version} %{http_code}", url + "/cart")
        body, _, version = out.rpartition("\n")
        self.assertEqual(version, "1.1 200")
        self.assertEqual(json.loads(body)["items"], ["apple", "pear"])
        with open(jar) as f:
            fields = [line.split("\t") for line in f if "APPSESSION" in line]
        self.assertEqual(len(fields), 1)
        self.assertEqual(fields[0][3], "TRUE", "the session cookie is not Secure")

    test_curl_cart_over_https.skip = SKIP_TLS_ON_PYPY

    def test_chromium_cart_over_https(self):
        """Headless Chromium loads a page over HTTPS whose script fills and reads the cart with the browser's cookies."""
        self.start(https=True)
        chromium = tool(self, "chromium")
        profile = os.path.join(self.dir, "profile")
        os.makedirs(profile)
        argv = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--ignore-certificate-errors", "--virtual-time-budget=10000",
            "--dump-dom", f"https://127.0.0.1:{self.https_port}/shop",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        self.assertIn('<p id="out">cart:apple,pear</p>', done.stdout, done.stderr[-2000:])

    test_chromium_cart_over_https.skip = SKIP_TLS_ON_PYPY

    def test_two_session_cookies(self):
        """A valid session cookie followed by a stale one naming another primary keeps its session: no hop, nothing lost."""
        self.start(https=False)
        status, headers, body = http("POST", self.base + "/cart/items", {"item": "apple"})
        self.assertEqual(status, 200, body)
        valid = set_cookie_value(headers)
        sid, primary, secondary = valid.split("!")
        stale = "C" * 22 + f"!{secondary}!{primary}"
        for cookies in (f"APPSESSION={valid}; APPSESSION={stale}", f"APPSESSION=junk; APPSESSION={valid}"):
            for item in ("pear", "plum"):
                status, headers, body = http("POST", self.base + "/cart/items", {"item": item}, cookies)
                self.assertEqual(status, 200, body)
                self.assertIsNone(set_cookie_value(headers), "the session moved or was replaced")
            status, headers, body = http("GET", self.base + "/cart", cookie=cookies)
            self.assertIsNone(set_cookie_value(headers))
        self.assertEqual(json.loads(body)["items"], ["apple", "pear", "plum", "pear", "plum"])
