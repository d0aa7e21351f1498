"""
Concurrent writes on one session sent to every server at once (what a
sticky balancer's redispatch or a stale cookie produces), through real
session server processes: each server that does not own the session takes
it over (epoch + 1, under the session's lock on both sides) or answers "not
served"; no write answered 200 is ever lost.
"""

from __future__ import annotations

import collections
import json
import threading

from twisted.trial.unittest import SynchronousTestCase

from .helpers import RealNodes, http, set_cookie_value


class Hammer:
    """
    C{threads} clients posting numbered items to one session, client i to
    server C{names[i % len(names)]}, all with the session's first cookie,
    C{per_thread} items each.  Counts each answer by server and status.
    """

    def __init__(self, urls, cookie: str, threads: int, per_thread: int):
        self.urls = urls
        self.cookie = cookie
        self.threads = threads
        self.per_thread = per_thread
        self.acked = []
        self.declined = []
        self.answers = collections.Counter()
        self.lock = threading.Lock()

    def run(self):
        workers = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(600)

    def client(self, i):
        name, url = self.urls[i % len(self.urls)]
        for k in range(self.per_thread):
            item = f"t{i}-{k}"
            headers = {}
            try:
                status, headers, _ = http("POST", url + "/cart/items", {"item": item}, f"APPSESSION={self.cookie}", timeout=30.0)
            except Exception as e:
                status = type(e).__name__
            with self.lock:
                self.answers[(name, status)] += 1
                if status == 200:
                    self.acked.append(item)
                elif status == 503 and headers.get("Appliance-Not-Served") == "1":
                    self.declined.append(item)

    def lost(self, items):
        present = set(items)
        return [item for item in self.acked if item not in present]

    def persisted_though_declined(self, items):
        present = set(items)
        return [item for item in self.declined if item in present]


def one_session(nodes, on="s1"):
    status, headers, body = http("POST", nodes.url(on, "/cart/items"), {"item": "first"})
    if status != 200:
        raise AssertionError(body)
    return set_cookie_value(headers)


def read_cart(nodes, cookie, on="s1"):
    status, _, body = http("GET", nodes.url(on, "/cart"), cookie=f"APPSESSION={cookie}", timeout=30.0)
    if status != 200:
        raise AssertionError((status, body))
    return json.loads(body)["items"]


class ConcurrentWritesTests(SynchronousTestCase):
    def test_writes_to_every_server_at_once_lose_nothing(self):
        """Parallel POSTs on one session spread over the three servers: every write answered 200 is in the cart at the end, none answered 'not served' is, and more than one server answered 200."""
        nodes = RealNodes(self)
        cookie = one_session(nodes)
        urls = [(name, nodes.url(name, "")) for name in ("s1", "s2", "s3")]
        hammer = Hammer(urls, cookie, threads=12, per_thread=10)
        hammer.run()
        items = read_cart(nodes, cookie)
        self.assertEqual(hammer.lost(items), [], dict(hammer.answers))
        self.assertEqual(hammer.persisted_though_declined(items), [], dict(hammer.answers))
        self.assertGreater(len(hammer.acked), 0)
        served = {name for (name, status) in hammer.answers if status == 200}
        self.assertGreater(len(served), 1, dict(hammer.answers))
        self.assertEqual(len(items), len(set(items)), "an item was added twice")
        unexpected = {k: n for k, n in hammer.answers.items() if k[1] not in (200, 503)}
        self.assertEqual(unexpected, {})
