"""
The sessions of a node through the admin listener (in memory): count, the
largest found by a walk in slices, one session's metadata without its
data, and the refusals of the operations (method, id, node).
"""

from __future__ import annotations

import json

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from appliance.admin import sessions
from appliance.admin.auth import Guard
from appliance.admin.listener import AdminSite, build_root
from appliance.config import ClusterConfig
from appliance.core.session import Changes
from appliance.server.service import SessionServerService

from .memory_http import exchange, request, responses

CONFIG = """
[cluster]
name = app.cluster.test
secret = a-long-secret
[node:s1]
http = 127.0.0.1:9001
replication = 127.0.0.1:9101
machine = m1
rack = r1
admin = 9721
[node:s2]
http = 127.0.0.1:9002
replication = 127.0.0.1:9102
machine = m2
rack = r2
[node:s3]
http = 127.0.0.1:9003
replication = 127.0.0.1:9103
machine = m3
rack = r3
admin = 9723
"""


def sid(i: int) -> str:
    return f"{i:022d}"


class SessionsTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = ClusterConfig.from_string(CONFIG, "test.ini")
        self.clock = MemoryReactorClock()
        self.server = SessionServerService(self.clock, self.cluster, "s1", now=self.clock.seconds)
        self.store = self.server.node.store
        self.site = AdminSite(build_root(self.clock, self.cluster, "node:s1", [self.server]), Guard.of(self.cluster))

    def call(self, method, path, body=b"", *headers):
        [(code, _, payload)] = responses(exchange(self.site, request(method, path, body, headers)))
        return code, json.loads(payload)

    def test_metadata(self):
        """One session's metadata by id: version, epoch, copies, size, idle time and expiry, never its data."""
        self.store.create(sid(1), Changes({"secret": b'"do not show"'}), "s2", 0.0)
        self.clock.advance(5)
        code, found = self.call("GET", f"/session.json?sid={sid(1)}")
        self.assertEqual(code, 200)
        self.assertEqual(
            {k: found[k] for k in ("sid", "node", "role", "version", "epoch", "primary", "secondary", "size")},
            {"sid": sid(1), "node": "s1", "role": "primary", "version": 1, "epoch": 1, "primary": "s1",
             "secondary": "s2", "size": len(b'"do not show"')},
        )
        self.assertEqual(found["idle_seconds"], 5.0)
        self.assertEqual(found["expires_in_seconds"], self.cluster.cluster.session_timeout - 5.0)
        self.assertNotIn("do not show", json.dumps(found))

    def test_unknown_session(self):
        """A session the node does not hold is a 404; a malformed id a 400."""
        self.assertEqual(self.call("GET", f"/session.json?sid={sid(9)}")[0], 404)
        self.assertEqual(self.call("GET", "/session.json?sid=../../etc")[0], 400)

    def test_largest_in_slices(self):
        """The largest sessions are found by a walk of several reactor turns; the count is immediate."""
        for i in range(2 * sessions.SLICE + 10):
            self.store.create(sid(i), Changes({"v": b"1" * (i % 97 + 1)}), "s2", 0.0)
        code, first = self.call("GET", "/sessions.json")
        self.assertEqual((code, first["count"], first["largest"], first["largest_age"]), (200, 2 * sessions.SLICE + 10, None, None))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIsNone(self.call("GET", "/sessions.json")[1]["largest"])
        self.clock.advance(0)
        largest = self.call("GET", "/sessions.json")[1]["largest"]
        self.assertEqual(len(largest), sessions.LARGEST)
        self.assertEqual({s["size"] for s in largest}, {97})
        self.assertEqual(largest, sorted(largest, key=lambda s: (s["size"], s["sid"]), reverse=True))

    def test_largest_refreshed_when_stale(self):
        """A list older than STALE seconds is walked again on the next request."""
        self.store.create(sid(1), Changes({"v": b"1"}), "s2", 0.0)
        self.call("GET", "/sessions.json")
        self.store.create(sid(2), Changes({"v": b"12345"}), "s2", 0.0)
        self.clock.advance(1)
        self.assertEqual([s["sid"] for s in self.call("GET", "/sessions.json")[1]["largest"]], [sid(1)])
        self.clock.advance(sessions.STALE)
        self.call("GET", "/sessions.json")
        self.assertEqual([s["sid"] for s in self.call("GET", "/sessions.json")[1]["largest"]], [sid(2), sid(1)])

    def test_methods(self):
        """Reads refuse POST and operations refuse GET, with 405."""
        self.assertEqual(self.call("POST", "/sessions.json", b"{}", "Content-Type: application/json",
                                   "Authorization: Bearer a-long-secret")[0], 405)
        self.assertEqual(self.call("GET", "/end-session")[0], 405)
        self.assertEqual(self.call("GET", "/drain")[0], 405)

    def test_end_needs_a_serving_node(self):
        """Ending a session on a node without its lease is answered 503, and the session stays."""
        self.store.create(sid(1), Changes({"v": b"1"}), "s2", 0.0)
        code, body = self.call("POST", "/end-session", json.dumps({"sid": sid(1)}).encode(),
                               "Content-Type: application/json", "Authorization: Bearer a-long-secret")
        self.assertEqual(code, 503, body)
        self.assertIsNotNone(self.store.get(sid(1)))

    def test_bad_body(self):
        """An operation's body must be a JSON object of strings."""
        for body in (b"[1]", b"{", b'{"sid": 1}'):
            code, _ = self.call("POST", "/end-session", body, "Content-Type: application/json",
                                "Authorization: Bearer a-long-secret")
            self.assertEqual(code, 400, body)

    def test_other_nodes(self):
        """A node not in the config is a 404, one without an admin address a 502."""
        self.assertEqual(self.call("GET", "/sessions.json?node=s9")[0], 404)
        self.assertEqual(self.call("GET", "/sessions.json?node=s2")[0], 502)

    def test_not_a_node(self):
        """A listener that serves no node needs the node named."""
        site = AdminSite(build_root(self.clock, self.cluster, "cluster", []), Guard.of(self.cluster))
        [(code, _, _)] = responses(exchange(site, request("GET", "/sessions.json")))
        self.assertEqual(code, 400)
