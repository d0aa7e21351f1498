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

    def test_sid_trailing_newline(self):
        """A sid followed by a newline (which re.match with $ lets through) is not a sid."""
        self.assertFalse(cookie.valid_sid(SID + "\n"))
        self.assertEqual(cookie.decode(f"{SID}\n!s1!s2", NODES), cookie.Route(None, "s1", "s2"))

    def test_session_cookie_found_among_others(self):
        """The session cookie is found among others without matching a longer name that ends with it."""
        value = f"{SID}!s1!s2".encode()
        header = b"XAPPSESSION=" + value.replace(b"s1", b"s3") + b"; other=1; APPSESSION=" + value + b"; last=2"
        self.assertEqual(cookie.session_cookie(header, b"APPSESSION", NODES), (value, cookie.Route(SID, "s1", "s2")))
        self.assertEqual(cookie.session_cookie(b"other=1", b"APPSESSION", NODES), (None, cookie.NO_ROUTE))
        self.assertEqual(cookie.session_cookie(None, b"APPSESSION", NODES), (None, cookie.NO_ROUTE))

    def test_first_valid_session_cookie_wins(self):
        """With several session cookies the first that reads as a session counts; malformed ones before it are skipped."""
        stale = f"{SID}!s2!s3".encode()
        fresh = ("B" * 22 + "!s1!s2").encode()
        for junk in (b"garbage", b"short!s1!s2", SID.encode() + b"!nobody!", b""):
            header = b"APPSESSION=" + junk + b"; APPSESSION=" + fresh + b"; APPSESSION=" + stale
            self.assertEqual(cookie.session_cookie(header, b"APPSESSION", NODES)[0], fresh)
        header = b"APPSESSION=" + stale + b";APPSESSION=" + fresh
        self.assertEqual(cookie.session_cookie(header, b"APPSESSION", NODES), (stale, cookie.Route(SID, "s2", "s3")))

    def test_set_cookie_flags(self):
        """Set-Cookie always carries HttpOnly and SameSite=Lax, Secure over TLS."""
        plain = cookie.set_cookie("APPSESSION", "v")
        self.assertIn("HttpOnly", plain)
        self.assertIn("SameSite=Lax", plain)
        self.assertNotIn("Secure", plain)
        self.assertIn("Secure", cookie.set_cookie("APPSESSION", "v", secure=True))
        self.assertIn("Max-Age=0", cookie.set_cookie("APPSESSION", "", max_age=0))
