"""
The status page in a real browser: headless Debian Chromium, driven over
the DevTools protocol (websocket-client), loads the page of a running
cluster from the balancer's admin listener, waits for the numbers, and
after a node is killed (SIGKILL) sees the same page, never reloaded, show
it down.  The screenshot is kept as a test artefact.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from .admin_cluster import AdminCluster
from .helpers import wait_for

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

#: Where the screenshot is kept, relative to trial's working directory
#: (_trial_temp).
SCREENSHOT = "status-page.png"


class DevTools:
    """
    One page of a headless Chromium, over its DevTools websocket.
    """

    def __init__(self, case, url: str):
        import websocket

        profile = tempfile.mkdtemp(prefix="chromium-")
        case.addCleanup(shutil.rmtree, profile, True)
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,1000",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        case.addCleanup(self._stop)
        active = os.path.join(profile, "DevToolsActivePort")
        wait_for(lambda: os.path.exists(active) and open(active).read().count("\n") >= 1, 30, "Chromium's DevTools port")
        port = int(open(active).read().split("\n")[0])
        targets = wait_for(lambda: [t for t in self._json(port, "/json/list") if t["type"] == "page"], 10, "a page")
        self.socket = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=10, suppress_origin=True)
        case.addCleanup(self.socket.close)
        self.ids = 0
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    @staticmethod
    def _json(port: int, path: str):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def call(self, method: str, **params):
        self.ids += 1
        self.socket.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.ids:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"]
        return result.get("value")


#: The state of every row and the sessions cell of each node, as the page shows them now.
ROWS = """JSON.stringify(Array.from(document.querySelectorAll("tr[data-section]")).map(
  r => [r.getAttribute("data-section"), r.getAttribute("data-state"), r.children[2] ? r.children[2].textContent : ""]))"""


class BrowserStatusTests(SynchronousTestCase):
    def test_page_shows_a_killed_node_down(self):
        """The page fills in every process's numbers, then shows a SIGKILLed node down without a reload; screenshot in _trial_temp/status-page.png."""
        if not os.access(CHROMIUM, os.X_OK):
            self.fail(f"{CHROMIUM} is missing: apt-get install chromium (this test never skips)")
        cluster = AdminCluster(self)
        for item in ("apple", "pear", "plum"):
            cluster.cart(item)
        page = DevTools(self, cluster.url("balancer:lb1", "/"))

        def rows():
            return {section: (state, cell) for section, state, cell in json.loads(page.evaluate(ROWS) or "[]")}

        def filled():
            shown = rows()
            nodes = [shown.get(f"node:{n}") for n in ("s1", "s2", "s3")]
            return all(n and n[0] == "up" and n[1].isdigit() for n in nodes) and shown.get("balancer:lb1", ("",))[0] == "up" \
                and shown.get("dns", ("",))[0] == "up" and sum(int(n[1]) for n in nodes) >= 2
        wait_for(filled, 30, "the page to show every process up with its session counts")
        self.assertEqual(page.evaluate("document.querySelector('#dns td:last-child').textContent"), "127.0.0.1")
        # Gone if the page were loaded again: it must redraw itself in place.
        page.evaluate("window.sameDocument = true")
        cluster.kill("s3")
        started = time.monotonic()
        wait_for(lambda: rows().get("node:s3", ("",))[0] == "down", 15, "the page to show s3 down")
        self.assertLess(time.monotonic() - started, 15)
        self.assertEqual(rows()["node:s1"][0], "up")
        self.assertIs(page.evaluate("window.sameDocument"), True)
        shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
        with open(SCREENSHOT, "wb") as f:
            f.write(shot)
        self.assertEqual(shot[:8], b"\x89PNG\r\n\x1a\n")
