"""
Tests for L{appliance.balancer.ratelimit} (time is a plain number) and for
the balancer keys of etc/cluster.ini added with it and the other issue 9
limits.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance.balancer.ratelimit import NewSessionLimit, client_key
from appliance.balancer.service import sweep_interval
from appliance.config import ClusterConfig, ConfigError

from .test_config import GOOD


class NewSessionLimitTests(SynchronousTestCase):
    def test_burst_then_rate(self):
        """A client may create burst sessions at once, then one per 1/rate seconds."""
        limit = NewSessionLimit(rate=4.0, burst=3)
        for _ in range(3):
            self.assertEqual(limit.wait("c", 0.0), 0.0)
            limit.charge("c", 0.0)
        self.assertAlmostEqual(limit.wait("c", 0.0), 0.25)
        self.assertEqual(limit.wait("c", 0.25), 0.0)
        limit.charge("c", 0.25)
        self.assertAlmostEqual(limit.wait("c", 0.3), 0.2)

    def test_charges_past_the_limit_add_up(self):
        """Sessions created while over the limit (requests in flight) lengthen the wait."""
        limit = NewSessionLimit(rate=1.0, burst=1)
        for _ in range(5):
            limit.charge("c", 0.0)
        self.assertAlmostEqual(limit.wait("c", 0.0), 5.0)

    def test_full_buckets_forgotten(self):
        """The sweep forgets clients whose bucket is full again, and only those."""
        limit = NewSessionLimit(rate=1.0, burst=10)
        limit.charge("a", 0.0)
        limit.charge("b", 5.0)
        limit.sweep(2.0)
        self.assertEqual(len(limit), 1)
        self.assertEqual(limit.wait("a", 2.0), 0.0)

    def test_bounded(self):
        """At most max_clients are tracked; the one charged longest ago goes first."""
        limit = NewSessionLimit(rate=1.0, burst=1, max_clients=3)
        for i, client in enumerate("abcd"):
            limit.charge(client, 0.0)
            if client == "b":
                limit.charge("a", 0.0)
        self.assertEqual(len(limit), 3)
        self.assertEqual(limit.wait("b", 0.0), 0.0)
        self.assertGreater(limit.wait("a", 0.0), 0.0)

    def test_client_keys(self):
        """IPv4 clients are limited per address (also when mapped), IPv6 ones per /64."""
        self.assertEqual(client_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("2001:db8:1:2::1"), client_key("2001:db8:1:2:ffff::9"))
        self.assertNotEqual(client_key("2001:db8:1:2::1"), client_key("2001:db8:1:3::1"))
        self.assertEqual(client_key("fe80::1%eth0"), client_key("fe80::2"))


BALANCER = GOOD + "\n[balancer:lb1]\nlisten = 127.0.0.1:9000\n"


class BalancerKeyTests(SynchronousTestCase):
    def load(self, extra: str):
        return ClusterConfig.from_string(BALANCER + extra, "test.ini").balancers[0]

    def test_defaults(self):
        """The hardening keys default to a bounded body rate, no internal endpoints and a new-session limit."""
        config = self.load("")
        self.assertEqual(
            (config.body_timeout, config.min_body_rate, config.forward_internal, config.new_session_rate, config.new_session_burst),
            (20.0, 500, False, 10.0, 100),
        )

    def test_values(self):
        """The keys take durations, sizes, yes/no and rates per second."""
        config = self.load(
            "body_timeout = 5s\nmin_body_rate = 1KiB\nforward_internal = yes\n"
            "new_session_rate = 0.5/s\nnew_session_burst = 20\n"
        )
        self.assertEqual(
            (config.body_timeout, config.min_body_rate, config.forward_internal, config.new_session_rate, config.new_session_burst),
            (5.0, 1024, True, 0.5, 20),
        )
        self.assertEqual(self.load("new_session_rate = 0\n").new_session_rate, 0.0)

    def test_mistakes(self):
        """A bad value names the file, the section and the key."""
        for line, key in (
            ("new_session_rate = fast", "new_session_rate"),
            ("new_session_burst = 0", "new_session_burst"),
            ("body_timeout = 0s", "body_timeout"),
            ("min_body_rate = slow", "min_body_rate"),
            ("forward_internal = maybe", "forward_internal"),
        ):
            with self.assertRaises(ConfigError) as caught:
                self.load(line + "\n")
            self.assertTrue(str(caught.exception).startswith(f"test.ini: [balancer:lb1] {key}: "), str(caught.exception))

    def test_sweep_follows_body_timeout(self):
        """A short body_timeout makes the deadline sweep run often enough for it."""
        self.assertEqual(sweep_interval(self.load("body_timeout = 200ms\n")), 0.05)
