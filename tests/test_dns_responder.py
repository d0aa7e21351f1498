"""
Tests for L{appliance.dns.responder} (cache, rotation, rate limiting glue)
and L{appliance.dns.rrl}.
"""

from __future__ import annotations

import dnslib
from dnslib import EDNS0, DNSRecord, EDNSOption
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appliance.dns.answer import cache_key, respond
from appliance.dns.responder import Responder
from appliance.dns.rrl import RateLimiter, Verdict, client_network

from tests.test_dns_support import NAME, ZONE, answers, parse, query, zone


class ResponderTests(SynchronousTestCase):
    def test_rotates_per_query(self):
        """Each repetition of a question gets the next order; the ID is patched in."""
        r = Responder(zone())
        seen = [parse(r.udp(query(NAME, qid=i), "10.0.0.1", 0.0)) for i in range(4)]
        self.assertEqual([s.header.id for s in seen], [0, 1, 2, 3])
        orders = [answers(s) for s in seen]
        self.assertEqual(orders[0], orders[2])
        self.assertEqual(orders[1], orders[3])
        self.assertNotEqual(orders[0], orders[1])

    def test_zone_change_clears_cache(self):
        """A new zone (balancer gone) is answered at once, not from the cache."""
        r = Responder(zone())
        r.udp(query(NAME), "10.0.0.1", 0.0)
        r.zone = zone(frozenset({"lb2"}))
        self.assertEqual(answers(parse(r.udp(query(NAME), "10.0.0.1", 0.0))), ["192.0.2.2"])

    def test_tcp_and_udp_cached_apart(self):
        """The same query is truncated over UDP but whole over TCP."""
        from tests.test_dns_support import CONFIG

        text = CONFIG + "".join(
            f"\n[balancer:many{i}]\nlisten = 198.51.100.{i}:80\n" for i in range(1, 41)
        )
        r = Responder(zone(frozenset(f"many{i}" for i in range(1, 41)), text))
        self.assertEqual(parse(r.udp(query(NAME), "10.0.0.1", 0.0)).header.tc, 1)
        self.assertEqual(len(parse(r.tcp(query(NAME))).rr), 40)
        self.assertEqual(parse(r.udp(query(NAME), "10.0.0.1", 0.0)).header.tc, 1)

    def test_edns_options_share_cache(self):
        """Queries differing only in EDNS option data (cookies) share a cache entry."""
        r = Responder(zone())
        for i in range(5):
            q = DNSRecord.question(NAME)
            q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(10, bytes([i]) * 8)]))
            reply = parse(r.udp(bytes(q.pack()), "10.0.0.1", 0.0))
            self.assertEqual(reply.header.id, q.header.id)
        self.assertEqual(len(r._udp_cache), 1)

    def test_cache_key_shapes(self):
        """Only a well-framed trailing OPT is stripped; other shapes key on all bytes."""
        plain = query(NAME)
        self.assertEqual(cache_key(plain), plain[2:])
        with_opt = query(NAME, edns=1232)
        self.assertIsInstance(cache_key(with_opt), tuple)
        self.assertEqual(cache_key(with_opt[:-1]), with_opt[:-1][2:])
        self.assertEqual(cache_key(with_opt + b"\x00"), (with_opt + b"\x00")[2:])
        bad_option = with_opt[:-2] + b"\x00\x05" + b"\x00\x0a\x00\x09x"
        self.assertEqual(cache_key(bad_option), bad_option[2:])
        self.assertEqual(
            parse(Responder(zone()).udp(bad_option, "10.0.0.1", 0)).header.rcode,
            dnslib.RCODE.FORMERR,
        )

    def test_cache_bounded(self):
        """The cache never holds more than its size."""
        r = Responder(zone(), cache_size=10)
        for i in range(50):
            r.udp(query(f"n{i}.{NAME}"), "10.0.0.1", 0.0)
        self.assertLessEqual(len(r._udp_cache), 10)

    def test_drops_responses_and_runts(self):
        """QR-set packets and runts get nothing and cost no rate-limit tokens."""
        limiter = RateLimiter(rate=1, slip=0)
        r = Responder(zone(), limiter)
        data = bytearray(query(NAME))
        data[2] |= 0x80
        self.assertIsNone(r.udp(bytes(data), "10.0.0.1", 0.0))
        self.assertIsNone(r.udp(b"abc", "10.0.0.1", 0.0))
        self.assertIsNotNone(r.udp(query(NAME), "10.0.0.1", 0.0))

    def test_rate_limited_with_slip(self):
        """Over the limit, UDP answers are dropped except every slip-th, sent empty with TC."""
        r = Responder(zone(), RateLimiter(rate=2, slip=2))
        results = [r.udp(query(NAME), "10.0.0.1", 5.0) for _ in range(6)]
        self.assertEqual(len(answers(parse(results[0]))), 2)
        self.assertEqual(len(answers(parse(results[1]))), 2)
        self.assertIsNone(results[2])
        slipped = parse(results[3])
        self.assertEqual((slipped.header.tc, len(slipped.rr)), (1, 0))
        self.assertIsNone(results[4])
        self.assertIsNotNone(results[5])

    def test_tcp_not_rate_limited(self):
        """TCP queries are answered whatever the UDP limit."""
        r = Responder(zone(), RateLimiter(rate=1, slip=0))
        for _ in range(5):
            self.assertEqual(len(answers(parse(r.tcp(query(NAME))))), 2)

    def test_formerr_for_garbage(self):
        """A malformed query with a good header is answered FORMERR."""
        r = Responder(zone())
        reply = parse(r.udp(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ab", "10.0.0.1", 0))
        self.assertEqual(reply.header.rcode, dnslib.RCODE.FORMERR)


class CachePropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [(NAME, "AAAA"), ("nope." + NAME, "A"), (ZONE, "SOA"), (NAME.upper(), "MX")]
                ),
                st.integers(0, 65535),
                st.one_of(st.none(), st.binary(max_size=40)),
            ),
            max_size=20,
        )
    )
    def test_cached_equals_uncached(self, asked):
        """Whatever was cached before, each answer equals a fresh respond() but for the ID."""
        r = Responder(zone())
        for (name, qtype), qid, option in asked:
            q = DNSRecord.question(name, qtype)
            q.header.id = qid
            if option is not None:
                q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(65001, option)]))
            data = bytes(q.pack())
            self.assertEqual(r.udp(data, "10.0.0.1", 0.0), respond(zone(), data).data)


class RateLimiterTests(SynchronousTestCase):
    def test_networks(self):
        """Clients are grouped by IPv4 /24 and IPv6 /56."""
        self.assertEqual(client_network("192.0.2.7"), client_network("192.0.2.200"))
        self.assertNotEqual(client_network("192.0.2.7"), client_network("192.0.3.7"))
        self.assertEqual(client_network("2001:db8:0:ff::1"), client_network("2001:db8:0:1::2"))
        self.assertNotEqual(client_network("2001:db8:0:100::1"), client_network("2001:db8::1"))
        self.assertEqual(client_network("::ffff:192.0.2.9"), client_network("192.0.2.1"))

    def test_refills_over_time(self):
        """Tokens come back at rate per second, up to one second's burst."""
        rrl = RateLimiter(rate=10, slip=0)
        verdicts = [rrl.check("192.0.2.1", 100.0) for _ in range(12)]
        self.assertEqual(verdicts.count(Verdict.ALLOW), 10)
        self.assertEqual(rrl.check("192.0.2.1", 100.25), Verdict.ALLOW)
        self.assertEqual(rrl.check("192.0.2.1", 100.25), Verdict.ALLOW)
        self.assertEqual(rrl.check("192.0.2.1", 100.25), Verdict.DROP)
        allowed = [rrl.check("192.0.2.1", 1000.0) for _ in range(11)]
        self.assertEqual(allowed.count(Verdict.ALLOW), 10)

    def test_same_network_shares_bucket(self):
        """Hosts in one /24 share a bucket; another /24 has its own."""
        rrl = RateLimiter(rate=1, slip=0)
        self.assertEqual(rrl.check("192.0.2.1", 0.0), Verdict.ALLOW)
        self.assertEqual(rrl.check("192.0.2.2", 0.0), Verdict.DROP)
        self.assertEqual(rrl.check("198.51.100.2", 0.0), Verdict.ALLOW)

    def test_slip_zero_never_slips(self):
        """With slip 0 every limited answer is dropped."""
        rrl = RateLimiter(rate=1, slip=0)
        rrl.check("192.0.2.1", 0.0)
        self.assertEqual({rrl.check("192.0.2.1", 0.0) for _ in range(10)}, {Verdict.DROP})

    def test_memory_bounded(self):
        """Idle networks are forgotten once max_clients is reached."""
        rrl = RateLimiter(rate=1, slip=0, max_clients=100)
        for i in range(250):
            rrl.check(f"10.{i}.0.1", float(i))
        self.assertLessEqual(rrl.tracked(), 100)
