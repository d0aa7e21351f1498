"""
The admin listeners of a running cluster (real processes on loopback):
each process's status, the cluster view through any listener, a killed
node shown down, one session's metadata and its end on both copies, and a
drain.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from .admin_cluster import AdminCluster
from .helpers import wait_for


class AdminE2ETests(SynchronousTestCase):
    def setUp(self):
        self.cluster = AdminCluster(self)

    def test_status_and_view(self):
        """Every process reports its part, and the view from any listener has them all up, then a killed node down."""
        c = self.cluster
        code, lb = c.get("balancer:lb1", "/status.json")
        self.assertEqual((code, lb["kind"], lb["name"]), (200, "balancer", "lb1"))
        self.assertEqual(lb["servers"], {"s1": "up", "s2": "up", "s3": "up"})
        code, dns = c.get("dns", "/status.json")
        self.assertEqual((dns["kind"], dns["answer"]), ("dns", ["127.0.0.1"]))
        code, s2 = c.get("node:s2", "/status.json")
        self.assertEqual((s2["kind"], s2["state"], s2["peers"]), ("node", "up", {"s1": True, "s3": True}))
        wait_for(lambda: set(c.get("node:s2", "/status.json")[1]["round_trip"]) == {"s1", "s3"}, 10,
                 "a heartbeat round trip to each peer")
        for section in ("node:s2", "dns"):
            view = c.get(section, "/cluster.json")[1]
            self.assertEqual([s["section"] for s in view["sections"]], ["node:s1", "node:s2", "node:s3", "balancer:lb1", "dns"])
        c.kill("s3")
        view = c.get("node:s2", "/cluster.json")[1]
        states = {s["section"]: s["state"] for s in view["sections"]}
        self.assertEqual(states["node:s3"], "down")
        self.assertEqual(states["node:s1"], "up")

    def test_session_metadata_and_end(self):
        """A session's metadata names its copies; ending it through any listener removes it from both."""
        c = self.cluster
        items, cookie = c.cart("apple")
        sid, primary, secondary = cookie.split("!")
        code, meta = c.get("dns", f"/session.json?node={primary}&sid={sid}")
        self.assertEqual(code, 200, meta)
        self.assertEqual((meta["role"], meta["primary"], meta["secondary"], meta["version"]), ("primary", primary, secondary, 1))
        self.assertEqual(c.get(f"node:{secondary}", f"/session.json?sid={sid}")[1]["role"], "backup")
        self.assertGreaterEqual(c.get("balancer:lb1", f"/sessions.json?node={primary}")[1]["count"], 1)
        self.assertEqual(c.post("balancer:lb1", "/end-session", {"node": primary, "sid": sid}, "wrong-secret")[0], 401)
        code, ended = c.post("balancer:lb1", "/end-session", {"node": primary, "sid": sid})
        self.assertEqual((code, ended), (200, {"ended": sid, "node": primary}))
        wait_for(lambda: c.get(f"node:{secondary}", f"/session.json?sid={sid}")[0] == 404, 10, "the backup to go")
        self.assertEqual(c.get(f"node:{primary}", f"/session.json?sid={sid}")[0], 404)
        self.assertEqual(c.cart(cookie=cookie)[0], [])

    def test_drain(self):
        """A drain through the admin listener hands the node's primaries over and leaves it draining."""
        c = self.cluster
        cookies = [c.cart(f"item{i}")[1] for i in range(6)]
        code, report = c.post("dns", "/drain", {"node": "s2"})
        self.assertEqual(code, 200, report)
        self.assertEqual((report["node"], report["left"], report["timed_out"]), ("s2", 0, False))
        self.assertEqual(c.get("node:s2", "/status.json")[1]["state"], "draining")
        self.assertEqual(c.get("node:s2", "/status.json")[1]["primaries"], 0)
        for i, cookie in enumerate(cookies):
            self.assertEqual(c.cart(cookie=cookie)[0], [f"item{i}"])
