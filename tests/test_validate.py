"""
Conformance: the session server passes C{wsgiref.validate} wrapping every
shipped application (the demo cart, the Flask shop, the Django site), on
every path of theirs, new sessions, rotation and logout included.
"""

from __future__ import annotations

import re
import warnings
from wsgiref.validate import WSGIWarning

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from appliance.config import ClusterConfig

from .helpers import cluster_ini
from .test_hosting_edges import memory_site
from .test_integrations import Browser, django_ready

APPS = """
[app:vcart]
mount = /vcart
wsgi = tests.validated_apps:cart
threads = no

[app:vshop]
mount = /vshop
wsgi = tests.validated_apps:shop
threads = no

[app:vsite]
mount = /vsite
wsgi = tests.validated_apps:site
threads = no
"""


class ValidatorTests(SynchronousTestCase):
    def setUp(self):
        django_ready()
        text, _ = cluster_ini(names=("s1",), apps=APPS)
        self.site, self.node = memory_site(ClusterConfig.from_string(text), MemoryReactorClock())
        self.browser = Browser(self.site)
        catcher = warnings.catch_warnings()
        catcher.__enter__()
        self.addCleanup(catcher.__exit__, None, None, None)
        warnings.simplefilter("error", WSGIWarning)

    def go(self, method, path, form=None, status=200):
        code, head, body = self.browser.go(method, path, form)
        self.assertEqual(code, status, body)
        self.assertEqual(self.flushLoggedErrors(), [])
        return body

    def test_demo_cart(self):
        """The demo cart under the validator: every path and method, new session to logout."""
        self.go("GET", "/vcart")
        self.go("HEAD", "/vcart")
        self.go("POST", "/vcart/items", {"item": "apple"})
        self.go("POST", "/vcart/items", {"item": ""}, 400)
        self.go("DELETE", "/vcart/items/apple")
        self.go("DELETE", "/vcart/items/kiwi", status=404)
        self.go("PUT", "/vcart/items", status=405)
        self.go("GET", "/vcart/nothing", status=404)
        self.go("POST", "/vcart/logout")

    def test_flask_shop(self):
        """The Flask shop under the validator: login (rotation), cart, wrong password, logout."""
        self.go("GET", "/vshop/")
        self.go("POST", "/vshop/login", {"user": "ann", "password": "wrong"}, 401)
        self.go("POST", "/vshop/cart", {"item": "pie"}, 403)
        self.go("POST", "/vshop/login", {"user": "ann", "password": "apple-pie"})
        self.go("POST", "/vshop/login", {"user": "ann", "password": "apple-pie", "remember": "yes"})
        self.go("POST", "/vshop/cart", {"item": "pie"})
        self.go("GET", "/vshop/missing", status=404)
        self.go("POST", "/vshop/logout")

    def test_django_site(self):
        """The Django site under the validator: the login form, login, a note, expiry, logout."""
        self.go("GET", "/vsite/", status=200)
        page = self.go("GET", "/vsite/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        self.go("POST", "/vsite/login/", {"username": "ann", "password": "apple-pie", "csrfmiddlewaretoken": token}, 302)
        csrf = self.browser.json("GET", "/vsite/")[1]["csrf"]
        self.go("POST", "/vsite/notes", {"text": "hi", "csrfmiddlewaretoken": csrf})
        self.go("POST", "/vsite/notes", {"text": "no token"}, 403)
        self.go("POST", "/vsite/expiry", {"seconds": "600", "csrfmiddlewaretoken": csrf})
        self.go("POST", "/vsite/logout/", {"csrfmiddlewaretoken": csrf}, 302)
