"""
Application hosting over real HTTP on loopback: the WSGI cart, twisted.web
resources, errors, cookies and the health endpoint (one node, no peers).
"""

from __future__ import annotations

import json
import time
from io import BytesIO
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from appliance.config import ClusterConfig
from appliance.server import hosting
from appliance.server.node import SessionNode

from .helpers import cluster_ini, quorum_for

APPS = """
[app:counter]
mount = /counter
resource = tests.apps:counter

[app:later]
mount = /later
resource = tests.apps:later

[app:broken]
mount = /broken
wsgi = tests.apps:broken

[app:notjson]
mount = /notjson
wsgi = tests.apps:not_json

[app:inline]
mount = /inline
wsgi = appliance.demo.cart:app
threads = no

[app:unavailable]
mount = /unavailable
wsgi = tests.apps:unavailable

[app:answers]
mount = /answers
resource = tests.apps:answers

[app:committing]
mount = /committing
resource = tests.apps:answers
commit_failed = yes

[app:login]
mount = /login
wsgi = tests.apps:login

[app:brokencommits]
mount = /brokencommits
wsgi = tests.apps:broken
commit_failed = yes
"""


class HostingTests(TestCase):
    timeout = 20

    def setUp(self):
        text, _ = cluster_ini(names=("s1",), extra="", dns=APPS)
        self.cluster = ClusterConfig.from_string(text)
        self.node = SessionNode(
            reactor, self.cluster, "s1", time.monotonic, call=None, connected=lambda p: False,
            peer_load=lambda p: 0, send=None, quorum=quorum_for(reactor, self.cluster, "s1", time.monotonic),
        )
        self.addCleanup(self.node.stop)
        self.state = {"node": "s1", "status": "ok"}
        site = hosting.site(reactor, self.cluster, self.node, lambda: dict(self.state))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def fetch(self, method, path, cookie=None, data=None):
        headers = Headers({b"Cookie": [cookie.encode()]} if cookie else {})
        producer = None
        if data is not None:
            headers.setRawHeaders(b"Content-Type", [b"application/x-www-form-urlencoded"])
            producer = FileBodyProducer(BytesIO(urlencode(data).encode()))
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(method.encode(), (self.base + path).encode(), headers, producer)
        body = yield readBody(response)
        set_cookie = response.headers.getRawHeaders(b"set-cookie", [None])[0]
        return response.code, body, set_cookie.decode() if set_cookie else None

    @defer.inlineCallbacks
    def test_cart_contract(self):
        """The demo cart's HTTP contract, with the session in the cookie."""
        code, body, set_cookie = yield self.fetch("GET", "/cart")
        self.assertEqual((code, json.loads(body), set_cookie), (200, {"items": []}, None))
        code, body, set_cookie = yield self.fetch("POST", "/cart/items", data={"item": "apple"})
        self.assertEqual((code, json.loads(body)), (200, ["apple"]))
        value = set_cookie.split(";")[0]
        sid, primary, secondary = value.split("=", 1)[1].split("!")
        self.assertEqual((len(sid), primary, secondary), (22, "s1", ""))
        self.assertIn("HttpOnly", set_cookie)
        self.assertIn("SameSite=Lax", set_cookie)
        yield self.fetch("POST", "/cart/items", value, {"item": "pear"})
        code, body, again = yield self.fetch("GET", "/cart", value)
        self.assertEqual((code, json.loads(body), again), (200, {"items": ["apple", "pear"]}, None))
        code, body, _ = yield self.fetch("DELETE", "/cart/items/apple", value)
        self.assertEqual((code, json.loads(body)), (200, ["pear"]))
        code, _, _ = yield self.fetch("DELETE", "/cart/items/kiwi", value)
        self.assertEqual(code, 404)
        code, _, cleared = yield self.fetch("POST", "/cart/logout", value)
        self.assertEqual(code, 200)
        self.assertIn("Max-Age=0", cleared)
        self.assertEqual(len(self.node.store), 0)
        code, body, _ = yield self.fetch("GET", "/cart", value)
        self.assertEqual(json.loads(body), {"items": []})

    @defer.inlineCallbacks
    def test_wsgi_in_reactor_thread(self):
        """A WSGI app mounted with threads = no runs in the reactor thread with its session."""
        code, body, set_cookie = yield self.fetch("POST", "/inline/items", data={"item": "fig"})
        self.assertEqual((code, json.loads(body)), (200, ["fig"]))
        code, body, _ = yield self.fetch("GET", "/inline", set_cookie.split(";")[0])
        self.assertEqual(json.loads(body), {"items": ["fig"]})

    @defer.inlineCallbacks
    def test_resource_sees_session(self):
        """A twisted.web resource reaches its session from the request and it persists."""
        code, body, set_cookie = yield self.fetch("GET", "/counter/a/b")
        self.assertEqual(json.loads(body), {"count": 1, "path": ["a", "b"]})
        value = set_cookie.split(";")[0]
        code, body, _ = yield self.fetch("GET", "/counter", value)
        self.assertEqual(json.loads(body)["count"], 2)

    @defer.inlineCallbacks
    def test_deferred_resource(self):
        """A resource answering later (NOT_DONE_YET) has its writes committed when it finishes."""
        code, body, set_cookie = yield self.fetch("GET", "/later")
        self.assertEqual((code, body), (200, b"late answer"))
        self.assertIsNotNone(set_cookie)
        (session,) = self.node.store.sessions.values()
        self.assertEqual(session.values, {"later": b"true"})

    @defer.inlineCallbacks
    def test_application_failure_commits_nothing(self):
        """An application that raises gets a 500 and its half-made changes are discarded."""
        code, body, set_cookie = yield self.fetch("GET", "/broken")
        self.assertEqual(code, 500)
        self.assertEqual(len(self.node.store), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_5xx_commits_nothing(self):
        """A WSGI application answering 503 leaves its session as it was."""
        code, body, set_cookie = yield self.fetch("GET", "/unavailable")
        self.assertEqual((code, body, set_cookie), (503, b"down", None))
        self.assertEqual(len(self.node.store), 0)

    @defer.inlineCallbacks
    def test_5xx_keeps_existing_session(self):
        """An existing session is unchanged by a resource's 5xx answer, and changed by its 2xx and 4xx ones."""
        code, body, set_cookie = yield self.fetch("GET", "/answers")
        value = set_cookie.split(";")[0]
        for status, count in ((500, 1), (503, 1), (404, 2), (200, 3)):
            code, body, _ = yield self.fetch("GET", f"/answers?status={status}", value)
            self.assertEqual(code, status)
            (session,) = self.node.store.sessions.values()
            self.assertEqual(session.values["count"], b"%d" % count, status)

    @defer.inlineCallbacks
    def test_commit_failed_yes(self):
        """With commit_failed = yes, a 5xx answer and an application that raised still commit their changes."""
        code, _, set_cookie = yield self.fetch("GET", "/committing?status=500")
        self.assertEqual(code, 500)
        (session,) = self.node.store.sessions.values()
        self.assertEqual(session.values, {"count": b"1"})
        self.assertIsNotNone(set_cookie)
        for sid in list(self.node.store.sessions):
            self.node.store.drop(sid)
        code, _, _ = yield self.fetch("GET", "/brokencommits")
        self.assertEqual(code, 500)
        (session,) = self.node.store.sessions.values()
        self.assertEqual(session.values, {"half": b'"written"'})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_wsgi_rotation(self):
        """A plain WSGI app rotates its session id: the response sets the new cookie, the old one reads as no session."""
        _, _, set_cookie = yield self.fetch("POST", "/cart/items", data={"item": "apple"})
        old = set_cookie.split(";")[0]
        code, body, rotated = yield self.fetch("POST", "/login", old)
        self.assertEqual((code, body), (200, b"welcome"))
        new = rotated.split(";")[0]
        self.assertNotEqual(new.split("!")[0], old.split("!")[0])
        code, body, _ = yield self.fetch("GET", "/cart", new)
        self.assertEqual(json.loads(body), {"items": ["apple"]})
        code, body, _ = yield self.fetch("GET", "/cart", old)
        self.assertEqual(json.loads(body), {"items": []})
        (session,) = self.node.store.sessions.values()
        self.assertEqual(session.values["user"], b'"ann"')

    @defer.inlineCallbacks
    def test_resource_rotation_not_on_failure(self):
        """A resource's rotation is undone by its 5xx answer (old id kept, no cookie) and done by its 2xx one."""
        _, _, set_cookie = yield self.fetch("GET", "/answers")
        old = set_cookie.split(";")[0]
        code, _, again = yield self.fetch("GET", "/answers?rotate=1&status=500", old)
        self.assertEqual((code, again), (500, None))
        self.assertEqual((list(self.node.store.sessions), self.node.store.tombstones), ([old.split("=")[1].split("!")[0]], {}))
        code, body, rotated = yield self.fetch("GET", "/answers?rotate=1", old)
        self.assertEqual((code, json.loads(body)), (200, {"count": 2}))
        new = rotated.split(";")[0]
        self.assertNotEqual(new.split("!")[0], old.split("!")[0])
        _, body, _ = yield self.fetch("GET", "/answers", new)
        self.assertEqual(json.loads(body), {"count": 3})
        _, body, _ = yield self.fetch("GET", "/answers", old)
        self.assertEqual(json.loads(body), {"count": 1})

    @defer.inlineCallbacks
    def test_not_json_value(self):
        """A value a session cannot hold gives a 500 that says so."""
        code, body, _ = yield self.fetch("GET", "/notjson")
        self.assertEqual(code, 500)
        self.assertIn(b"cannot hold", body)
        self.assertEqual(len(self.node.store), 0)

    @defer.inlineCallbacks
    def test_malformed_cookie_is_no_cookie(self):
        """Garbage in the cookie reads as no session; nothing crashes."""
        for value in ("APPSESSION=%%%", "APPSESSION=a!b!c!d", "APPSESSION=" + "x" * 3000):
            code, body, _ = yield self.fetch("GET", "/cart", value)
            self.assertEqual((code, json.loads(body)), (200, {"items": []}))

    @defer.inlineCallbacks
    def test_health_and_404(self):
        """The health endpoint answers JSON; unknown paths are 404."""
        code, body, _ = yield self.fetch("GET", "/_appliance/health")
        self.assertEqual((code, json.loads(body)["status"]), (200, "ok"))
        code, _, _ = yield self.fetch("GET", "/nothing")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_draining_health_is_503(self):
        """A draining server's health answers 503 (balancers take it out of rotation) with its status in the JSON."""
        self.state["status"] = "draining"
        code, body, _ = yield self.fetch("GET", "/_appliance/health")
        self.assertEqual((code, json.loads(body)["status"]), (503, "draining"))
