"""
Failover and takeover between real session-server processes on loopback:
the primary is SIGKILLed, requests land on the secondary or on a third
server, and the session survives with its cookie naming the new owner.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from .helpers import RealNodes, health, http, set_cookie_value, wait_for


class ServerFailoverTests(SynchronousTestCase):
    def setUp(self):
        self.nodes = RealNodes(self)
        self.cookie = None
        for item in ("apple", "pear", "plum"):
            self.cookie = self.add("s1", item)
        self.sid, self.primary, self.secondary = self.cookie.split("!")
        self.assertEqual((self.primary, self.secondary), ("s1", "s3"))

    def add(self, node, item):
        cookie = f"APPSESSION={self.cookie}" if self.cookie else None
        status, headers, body = http("POST", self.nodes.url(node, "/cart/items"), {"item": item}, cookie)
        self.assertEqual(status, 200, body)
        return set_cookie_value(headers) or self.cookie

    def cart(self, node):
        status, headers, body = http("GET", self.nodes.url(node, "/cart"), cookie=f"APPSESSION={self.cookie}")
        self.assertEqual(status, 200, body)
        return json.loads(body)["items"], set_cookie_value(headers)

    def restart(self, name):
        """
        Start C{name} again, as the all-in-one's supervisor does: with three
        servers and no witness, two of them must be up for a majority.
        """
        self.nodes.start(name)
        self.nodes.wait_linked(name)

    def test_secondary_takes_over_dead_primary(self):
        """SIGKILL the primary: the secondary serves the whole cart and names itself primary; again after a restart."""
        self.nodes.kill("s1")
        items, cookie = self.cart("s3")
        self.assertEqual(items, ["apple", "pear", "plum"])
        sid, primary, secondary = cookie.split("!")
        self.assertEqual((sid, primary, secondary), (self.sid, "s3", "s2"))
        self.cookie = cookie
        self.add("s3", "kiwi")
        self.restart("s1")
        self.nodes.kill("s3")
        items, cookie = self.cart("s2")
        self.assertEqual(items, ["apple", "pear", "plum", "kiwi"])
        self.assertEqual(cookie.split("!")[1], "s2")

    def test_secondary_promotes_without_a_request(self):
        """When the primary dies, its secondary promotes itself and re-protects the session before any request; a second death after a restart loses nothing."""
        self.nodes.kill("s1")
        wait_for(lambda: health(self.nodes.ports["s3"][0])["primaries"] == 1, 10, "s3 to promote")
        wait_for(lambda: health(self.nodes.ports["s2"][0])["sessions"] == 1, 10, "a new backup on s2")
        self.restart("s1")
        self.nodes.kill("s3")
        items, cookie = self.cart("s2")
        self.assertEqual(items, ["apple", "pear", "plum"])

    def test_third_server_takes_over_from_live_primary(self):
        """A request on a server holding nothing takes the session over from the live primary."""
        items, cookie = self.cart("s2")
        self.assertEqual(items, ["apple", "pear", "plum"])
        self.assertEqual(cookie.split("!"), [self.sid, "s2", "s3"])
        # The old primary serves it no more; its copy names s2 the primary.
        self.assertEqual(json.loads(http("GET", self.nodes.url("s1", "/_appliance/health"))[2])["primaries"], 0)
        # One line per burst of hand-overs (appliance.logs.Tally), after a quiet second.
        wait_for(lambda: "handed 1 sessions over to s2" in self.nodes.log("s1"), 10, "s1 to log the hand-over")

    def test_third_server_takes_over_from_secondary(self):
        """With the primary dead, a third server takes the session from the secondary."""
        self.nodes.kill("s1")
        items, cookie = self.cart("s2")
        self.assertEqual(items, ["apple", "pear", "plum"])
        self.assertEqual(cookie.split("!"), [self.sid, "s2", "s3"])

    def test_unknown_session_gets_new_id(self):
        """A forged cookie gets a new empty session with a new id, never a 500."""
        self.cookie = "A" * 22 + "!s1!s2"
        status, headers, body = http("POST", self.nodes.url("s2", "/cart/items"), {"item": "x"}, "APPSESSION=" + self.cookie)
        self.assertEqual((status, json.loads(body)), (200, ["x"]))
        self.assertNotEqual(set_cookie_value(headers).split("!")[0], "A" * 22)
