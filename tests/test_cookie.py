"""
The session cookie codec: a routing hint that never raises.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appliance import cookie

NODES = {"s1", "s2", "s3"}
SID = "A" * 21 + "w"


class CookieTests(SynchronousTestCase):
    def test_new_sid_is_128_random_bits(self):
        """New ids are 22 URL-safe characters (128 bits) and differ."""
        sids = {cookie.new_sid() for _ in range(1000)}
        self.assertEqual(len(sids), 1000)
        self.assertTrue(all(cookie.valid_sid(s) for s in sids))

    def test_round_trip(self):
        """encode then decode gives back sid, primary and secondary."""
        self.assertEqual(cookie.decode(cookie.encode(SID, "s1", "s2"), NODES), cookie.Route(SID, "s1", "s2"))

    def test_empty_secondary(self):
        """A session without a secondary has an empty last field."""
        value = cookie.encode(SID, "s1", None)
        self.assertEqual(value, SID + "!s1!")
        self.assertEqual(cookie.decode(value, NODES), cookie.Route(SID, "s1", None))

    def test_unknown_nodes_are_ignored(self):
        """Node names the cluster does not know read as absent."""
        self.assertEqual(cookie.decode(f"{SID}!evil.example!s2", NODES), cookie.Route(SID, None, "s2"))

    def test_malformed_sid(self):
        """A malformed sid reads as absent but the routing still counts."""
        self.assertEqual(cookie.decode("short!s1!s2", NODES), cookie.Route(None, "s1", "s2"))

    def test_garbage(self):
        """Wrong field counts, bytes that are not ASCII and huge values read as no cookie."""
        for value in (None, "", "a!b", "a!b!c!d", b"\xff\xfe!s1!s2", "x" * 5000, 42):
            self.assertEqual(cookie.decode(value, NODES), cookie.NO_ROUTE)

    @given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
    def test_never_raises(self, value):
        """Any value decodes to a Route whose nodes are known."""
        route = cookie.decode(value, NODES)
        self.assertTrue(route.primary is None or route.primary in NODES)
        self.assertTrue(route.sid is None or cookie.valid_sid(route.sid))

    def test_find_in_header(self):
        """The named cookie is found among others without matching a suffix."""
        header = b"XAPPSESSION=bad; other=1; APPSESSION=good!s1!s2; last=2"
        self.assertEqual(cookie.find(header, b"APPSESSION"), b"good!s1!s2")
        self.assertEqual(cookie.find(b"APPSESSION=v", b"APPSESSION"), b"v")
        self.assertIsNone(cookie.find(b"other=1", b"APPSESSION"))

    def test_set_cookie_flags(self):
        """Set-Cookie always carries HttpOnly and SameSite=Lax, Secure over TLS."""
        plain = cookie.set_cookie("APPSESSION", "v")
        self.assertIn("HttpOnly", plain)
        self.assertIn("SameSite=Lax", plain)
        self.assertNotIn("Secure", plain)
        self.assertIn("Secure", cookie.set_cookie("APPSESSION", "v", secure=True))
        self.assertIn("Max-Age=0", cookie.set_cookie("APPSESSION", "", max_age=0))
