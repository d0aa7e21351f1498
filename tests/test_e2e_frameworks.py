"""
The Flask shop and the Django site, unchanged but for the adapter's
configuration, on real session servers behind the real balancer: a
logged-in user's state (Django's auth included) survives SIGKILL of the
session's primary; login rotates the id, logout ends the session, a
lifetime set by the application expires it.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from .helpers import RealNodes, free_ports, health, http, set_cookie_value, wait_for
from .test_integrations import django_ready

APPS = """
[app:shop]
mount = /shop
wsgi = examples.flask_shop:app

[app:site]
mount = /site
wsgi = examples.django_site.wsgi:application
"""


class _Answers(urllib.request.HTTPRedirectHandler):
    """
    Hands a redirect back as it came (its Set-Cookie is what a login sets).
    """

    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_Answers)


def one(method, url, form=None, cookie=None):
    """
    One request, redirects not followed: (status, headers, body).
    """
    headers = {"Cookie": cookie} if cookie else {}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        with _opener.open(urllib.request.Request(url, body, headers, method=method), timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class Client:
    """
    A browser's view: the appliance cookie, kept across answers.
    """

    def __init__(self, case, base):
        self.case = case
        self.base = base
        self.cookie = None

    def go(self, method, path, form=None, status=200):
        status_got, headers, body = one(method, self.base + path, form, f"APPSESSION={self.cookie}" if self.cookie else None)
        self.case.assertEqual(status_got, status, body[:500])
        for value in headers.get_all("Set-Cookie") or []:
            self.case.assertTrue(value.startswith("APPSESSION="), f"a cookie not the appliance's: {value}")
            self.cookie = None if "Max-Age=0" in value else set_cookie_value(headers)
        return body

    def json(self, method, path, form=None, status=200):
        return json.loads(self.go(method, path, form, status))

    @property
    def primary(self):
        return self.cookie.split("!")[1]

    @property
    def sid(self):
        return self.cookie.split("!")[0]


class FrameworkEndToEndTests(SynchronousTestCase):
    def setUp(self):
        django_ready()  # the site's users, in a database the servers share
        (lb,) = free_ports(1)
        balancer = f"""
[balancer:lb1]
listen = 127.0.0.1:{lb}
mode = plugin
node = s1
health_interval = 200ms
health_rise = 1
down_time = 1s
"""
        self.nodes = RealNodes(self, balancer=balancer, apps=APPS)
        self.nodes.start("s1", "balancer")
        self.base = f"http://127.0.0.1:{lb}"
        wait_for(lambda: http("GET", self.base + "/_appliance/lb-health")[0] == 200, 30, "the balancer")

    def test_flask_shop_survives_primary_death(self):
        """Flask: login rotates the id, the logged-in cart survives kill -9 of the primary, logout ends it."""
        client = Client(self, self.base)
        client.json("POST", "/shop/login", {"user": "ann", "password": "apple-pie"})
        client.json("POST", "/shop/cart", {"item": "pie"})
        first = client.cookie
        client.json("POST", "/shop/login", {"user": "ann", "password": "apple-pie"})
        self.assertNotEqual(client.sid, first.split("!")[0])
        old = Client(self, self.base)
        old.cookie = first
        self.assertIsNone(old.json("GET", "/shop/")["user"])
        client.json("POST", "/shop/cart", {"item": "tart"})
        self.nodes.kill(client.primary)
        page = client.json("GET", "/shop/")
        self.assertEqual((page["user"], page["cart"]), ("ann", ["pie", "tart"]))
        self.assertEqual(client.json("POST", "/shop/cart", {"item": "cake"})["cart"], ["pie", "tart", "cake"])
        client.json("POST", "/shop/logout")
        self.assertIsNone(client.cookie)
        self.assertEqual(old.json("GET", "/shop/")["user"], None)

    def login(self, client, user="ann", password="apple-pie"):
        page = client.go("GET", "/site/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        before = client.cookie
        client.go("POST", "/site/login/", {"username": user, "password": password, "csrfmiddlewaretoken": token}, 302)
        self.assertNotEqual(client.cookie, before)
        return before

    def test_django_auth_survives_primary_death(self):
        """Django: auth login (a rotated id) and the session's notes survive kill -9 of the primary; logout flushes it."""
        client = Client(self, self.base)
        anonymous = self.login(client)
        self.assertIsNotNone(anonymous)
        page = client.json("GET", "/site/")
        self.assertEqual(page["user"], "ann")
        client.json("POST", "/site/notes", {"text": "remember the milk", "csrfmiddlewaretoken": page["csrf"]})
        self.nodes.kill(client.primary)
        page = client.json("GET", "/site/")
        self.assertEqual((page["user"], page["notes"]), ("ann", ["remember the milk"]))
        old = Client(self, self.base)
        old.cookie = anonymous
        self.assertIsNone(old.json("GET", "/site/")["user"])
        client.go("POST", "/site/logout/", {"csrfmiddlewaretoken": page["csrf"]}, 302)
        self.assertIsNone(client.cookie)

    def test_django_expiry(self):
        """Django: set_expiry(2) gives the session two idle seconds on the servers, after which the user is anonymous."""
        client = Client(self, self.base)
        self.login(client)
        page = client.json("GET", "/site/")
        self.assertEqual(client.json("POST", "/site/expiry", {"seconds": "2", "csrfmiddlewaretoken": page["csrf"]}), {"expiry_age": 2})
        sid, primary, secondary = client.cookie.split("!")
        # Watch the servers (a request would keep the session alive).
        ports = [self.nodes.ports[primary][0], self.nodes.ports[secondary][0]]
        self.assertEqual([health(p)["sessions"] for p in ports], [1, 1])
        wait_for(lambda: [health(p)["sessions"] for p in ports] == [0, 0], 20, "the session to expire on both copies")
        self.assertIsNone(client.json("GET", "/site/")["user"])
