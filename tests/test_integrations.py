"""
The Flask, Django and Pyramid adapters through a real session server (in
memory, the applications in the reactor thread): the framework's own
session API is the appliance's session, rotation on login, logout,
lifetimes, and one clear sentence outside the appliance.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from urllib.parse import urlencode

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from appliance.config import ClusterConfig
from appliance.integrations import NotInAppliance

from .helpers import cluster_ini
from .memory_http import exchange, request, responses
from .test_hosting_edges import memory_site

APPS = """
[app:shop]
mount = /shop
wsgi = examples.flask_shop:app
threads = no

[app:site]
mount = /site
wsgi = examples.django_site.wsgi:application
threads = no

[app:pyramid]
mount = /pyramid
wsgi = tests.framework_apps:pyramid_app
threads = no
"""

_django = {}


def django_ready():
    """
    The example Django site on a fresh SQLite database with one user, ann
    (set up once per test process: Django's settings are global).
    """
    if not _django:
        path = os.path.join(tempfile.mkdtemp(prefix="appliance-django-"), "db.sqlite3")
        os.environ["DJANGO_SITE_DB"] = path
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from django.contrib.auth.models import User

        User.objects.create_user("ann", password="apple-pie")
        User.objects.create_user("bob", password="blueberry")
        _django["db"] = path
    return _django["db"]


class Browser:
    """
    One client of the session server, keeping the appliance's cookie.
    """

    def __init__(self, site):
        self.site = site
        self.cookie = None
        self.set_cookies = []

    def go(self, method, path, form=None, cookie=True):
        headers = []
        if cookie and self.cookie:
            headers.append(f"Cookie: APPSESSION={self.cookie}")
        body = b""
        if form is not None:
            body = urlencode(form).encode()
            headers.append("Content-Type: application/x-www-form-urlencoded")
        ((code, head, data),) = responses(exchange(self.site, request(method, path, body, tuple(headers))))
        self.set_cookies = head.get(b"set-cookie", [])
        for value in self.set_cookies:
            text = value.decode()
            if text.startswith("APPSESSION="):
                self.cookie = None if "Max-Age=0" in text else text.split(";")[0].split("=", 1)[1]
        return code, head, data

    def json(self, method, path, form=None):
        code, _, data = self.go(method, path, form)
        return code, json.loads(data)

    @property
    def sid(self):
        return self.cookie.split("!")[0] if self.cookie else None


class Base(SynchronousTestCase):
    def setUp(self):
        django_ready()
        text, _ = cluster_ini(names=("s1",), extra="session_timeout = 30m", apps=APPS)
        self.clock = MemoryReactorClock()
        self.site, self.node = memory_site(ClusterConfig.from_string(text), self.clock)
        self.browser = Browser(self.site)

    def stored(self):
        """
        The values of the one session the node holds, decoded.
        """
        (session,) = self.node.store.sessions.values()
        return session, {k: json.loads(v) for k, v in session.values.items()}


class FlaskTests(Base):
    def login(self, **extra):
        return self.browser.json("POST", "/shop/login", dict(user="ann", password="apple-pie", **extra))

    def test_session_is_the_appliance_session(self):
        """flask.session reads and writes the appliance session, and Flask sets no cookie of its own."""
        self.assertEqual(self.login(), (200, {"user": "ann"}))
        self.assertEqual([c.split(b"=")[0] for c in self.browser.set_cookies], [b"APPSESSION"])
        self.assertEqual(self.browser.json("POST", "/shop/cart", {"item": "pie"}), (200, {"cart": ["pie"]}))
        _, values = self.stored()
        self.assertEqual((values["user"], values["cart"]), ("ann", ["pie"]))
        code, page = self.browser.json("GET", "/shop/")
        self.assertEqual(page, {"user": "ann", "cart": ["pie"], "flashes": ["welcome, ann"]})
        self.assertEqual(self.browser.json("GET", "/shop/")[1]["flashes"], [])

    def test_login_rotates_the_id(self):
        """Logging in gives the session a new id; the old id reads as no session."""
        self.login()
        first = self.browser.cookie
        self.login()
        self.assertNotEqual(self.browser.cookie, first)
        old = Browser(self.site)
        old.cookie = first
        self.assertEqual(old.json("GET", "/shop/")[1]["user"], None)
        self.assertEqual(self.browser.json("GET", "/shop/")[1]["user"], "ann")

    def test_rotation_moves_existing_session(self):
        """A session that existed before the login keeps its data under the new id."""
        self.browser.json("POST", "/shop/login", {"user": "ann", "password": "wrong"})
        self.assertIsNone(self.browser.cookie)
        self.login()
        before = self.browser.sid
        self.login()
        self.assertNotEqual(self.browser.sid, before)
        self.assertEqual(self.browser.json("GET", "/shop/")[1]["user"], "ann")
        self.assertTrue(self.node.store.gone(before))

    def test_permanent_is_the_lifetime(self):
        """session.permanent gives the session PERMANENT_SESSION_LIFETIME on the server; not permanent, the cluster default."""
        self.login(remember="yes")
        session, _ = self.stored()
        self.assertEqual(session.timeout, 31 * 86400.0)
        self.login()
        session, _ = self.stored()
        self.assertEqual(session.timeout, 1800.0)

    def test_logout_ends_the_session(self):
        """session.clear() on logout removes the session everywhere and clears the cookie."""
        self.login()
        self.assertEqual(self.browser.json("POST", "/shop/logout"), (200, {"logged_out": True}))
        self.assertIsNone(self.browser.cookie)
        self.assertEqual(len(self.node.store), 0)

    def test_read_only_visit_creates_nothing(self):
        """A visit that only reads creates no session and sets no cookie."""
        code, head, _ = self.browser.go("GET", "/shop/")
        self.assertEqual((code, head.get(b"set-cookie"), len(self.node.store)), (200, None, 0))

    def test_outside_the_appliance(self):
        """Under Flask's own test client (no appliance) a request fails with one sentence saying so."""
        from examples.flask_shop import app

        app.testing = True
        try:
            with self.assertRaises(NotInAppliance) as caught:
                app.test_client().get("/")
        finally:
            app.testing = False
        self.assertIn("twistd appliance", str(caught.exception))
        self.assertIn("appliance.integrations.flask", str(caught.exception))


class DjangoTests(Base):
    def csrf(self):
        return self.browser.json("GET", "/site/")[1]["csrf"]

    def login(self, user="ann", password="apple-pie"):
        code, _, page = self.browser.go("GET", "/site/login/")
        self.assertEqual(code, 200)
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        return self.browser.go(
            "POST", "/site/login/", {"username": user, "password": password, "csrfmiddlewaretoken": token}
        )

    def test_login_rotates_and_keeps_user(self):
        """django.contrib.auth login() rotates the id (cycle_key) and the user is logged in under the new one."""
        code, _, _ = self.login()
        self.assertEqual(code, 302)
        self.assertEqual(self.browser.json("GET", "/site/")[1]["user"], "ann")
        _, values = self.stored()
        self.assertIn("_auth_user_id", values)
        first = self.browser.sid
        self.login("bob", "blueberry")
        self.assertNotEqual(self.browser.sid, first)
        self.assertEqual(self.browser.json("GET", "/site/")[1]["user"], "bob")
        self.assertTrue(self.node.store.gone(first))

    def test_anonymous_session_rotated_on_login(self):
        """A session made before login (its CSRF token) is rotated by login, not reused: no fixation."""
        self.browser.go("GET", "/site/login/")
        anonymous = self.browser.sid
        self.assertIsNotNone(anonymous)
        self.login()
        self.assertNotEqual(self.browser.sid, anonymous)
        old = Browser(self.site)
        old.cookie = f"{anonymous}!s1!"
        self.assertIsNone(old.json("GET", "/site/")[1]["user"])

    def test_session_data_and_logout(self):
        """Views keep data in request.session; logout() (flush) ends the session everywhere."""
        self.login()
        code, page = self.browser.json("POST", "/site/notes", {"text": "hello", "csrfmiddlewaretoken": self.csrf()})
        self.assertEqual((code, page), (200, {"notes": ["hello"]}))
        self.assertEqual(self.browser.json("GET", "/site/")[1]["notes"], ["hello"])
        code, _, _ = self.browser.go("POST", "/site/logout/", {"csrfmiddlewaretoken": self.csrf()})
        self.assertIn(code, (200, 302))
        self.assertIsNone(self.browser.cookie)
        self.assertEqual(len(self.node.store), 0)

    def test_set_expiry_is_the_lifetime(self):
        """set_expiry(n) gives the session n seconds of idle life on the server; get_expiry_age reads it; 0 is the default."""
        self.login()
        self.assertEqual(self.browser.json("GET", "/site/")[1]["expiry_age"], 1800)
        code, page = self.browser.json("POST", "/site/expiry", {"seconds": "600", "csrfmiddlewaretoken": self.csrf()})
        self.assertEqual((code, page), (200, {"expiry_age": 600}))
        self.assertEqual(self.stored()[0].timeout, 600.0)
        self.assertEqual(self.browser.json("GET", "/site/")[1]["expiry_age"], 600)
        self.browser.json("POST", "/site/expiry", {"seconds": "0", "csrfmiddlewaretoken": self.csrf()})
        self.assertEqual(self.stored()[0].timeout, 1800.0)

    def test_session_pages_vary_on_cookie(self):
        """A page that read the session says Vary: Cookie, as with Django's own middleware."""
        code, head, _ = self.browser.go("GET", "/site/")
        self.assertEqual(code, 200)
        self.assertIn(b"Cookie", b",".join(head.get(b"vary", [])))

    def test_cookie_settings(self):
        """SESSION_COOKIE_SECURE marks the appliance's cookie Secure over plain HTTP; SESSION_COOKIE_NAME is ignored."""
        from django.test import override_settings

        self.login()
        self.assertNotIn(b"; Secure", self.browser.set_cookies[0])
        with override_settings(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_NAME="other"):
            self.login("bob", "blueberry")
        self.assertEqual([c.split(b"=")[0] for c in self.browser.set_cookies], [b"APPSESSION"])
        self.assertIn(b"; Secure", self.browser.set_cookies[0])
        self.assertEqual(self.browser.json("GET", "/site/")[1]["user"], "bob")

    def test_expired_session_logs_out(self):
        """A session idle past its lifetime is gone: the user is anonymous again."""
        self.login()
        self.browser.json("POST", "/site/expiry", {"seconds": "60", "csrfmiddlewaretoken": self.csrf()})
        self.clock.advance(61)
        self.node.expire()
        self.assertIsNone(self.browser.json("GET", "/site/")[1]["user"])

    def test_outside_the_appliance(self):
        """Under Django's own test client (no appliance) a request fails with one sentence saying so."""
        from django.test import Client

        with self.assertRaises(NotInAppliance) as caught:
            Client().get("/")
        self.assertIn("appliance.integrations.django", str(caught.exception))
        from appliance.integrations.django import SessionStore

        with self.assertRaises(NotInAppliance):
            SessionStore()["x"] = 1


class PyramidTests(Base):
    def test_session_counter_and_flash(self):
        """request.session is the appliance session, with flash messages kept in it."""
        self.assertEqual(self.browser.json("GET", "/pyramid/count"), (200, {"count": 1, "new": True}))
        self.assertEqual(self.browser.json("GET", "/pyramid/count"), (200, {"count": 2, "new": False}))
        self.assertEqual(
            self.browser.json("GET", "/pyramid/flashes")[1], {"peek": ["visit 1", "visit 2"], "pop": ["visit 1", "visit 2"], "after": []}
        )
        self.assertEqual(self.browser.json("GET", "/pyramid/flashes")[1]["pop"], [])

    def test_csrf_token_kept(self):
        """A CSRF token made once is the same on the next request."""
        _, first = self.browser.json("GET", "/pyramid/csrf")
        _, again = self.browser.json("GET", "/pyramid/csrf")
        self.assertEqual((first["same"], again["token"]), (True, first["token"]))

    def test_rotate_and_invalidate(self):
        """rotate() gives a new id keeping the data; invalidate() ends the session everywhere."""
        self.browser.json("GET", "/pyramid/count")
        first = self.browser.sid
        self.assertEqual(self.browser.json("GET", "/pyramid/count?rotate=1")[1]["count"], 2)
        self.assertNotEqual(self.browser.sid, first)
        self.assertEqual(self.browser.json("GET", "/pyramid/logout"), (200, {"left": 0}))
        self.assertIsNone(self.browser.cookie)
        self.assertEqual(len(self.node.store), 0)

    def test_outside_the_appliance(self):
        """The session factory outside the appliance fails with one sentence saying so."""
        from pyramid.interfaces import ISession
        from pyramid.request import Request
        from zope.interface.verify import verifyObject

        from appliance.core.session import SessionData
        from appliance.integrations.pyramid import session_factory

        with self.assertRaises(NotInAppliance) as caught:
            session_factory(Request.blank("/"))
        self.assertIn("appliance.integrations.pyramid", str(caught.exception))
        verifyObject(ISession, session_factory(Request.blank("/", environ={"appliance.session": SessionData()})))
