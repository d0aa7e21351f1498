"""
Tests for L{appliance.dns.answer} and L{appliance.dns.zone}: answers built
from bytes, without I/O.
"""

from __future__ import annotations

import struct

import dnslib
from dnslib import EDNS0, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appliance.dns.answer import respond, truncated
from appliance.dns.zone import parse_frontends

from tests.test_dns_support import (
    CONFIG,
    HEADER,
    MALFORMED,
    NAME,
    ZONE,
    answers,
    cluster,
    parse,
    pointer_chain_query,
    query,
    zone,
)


def reply(data: bytes, rotation: int = 0, tcp: bool = False, live=None):
    result = respond(zone(live), data, rotation, tcp)
    assert result is not None
    return parse(result.data)


class ZoneTests(SynchronousTestCase):
    def test_frontends_skip_unusable_addresses(self):
        """Balancers on host names or unspecified addresses are skipped and named."""
        text = CONFIG.replace("listen = 192.0.2.2:8080", "listen = lb.example:8080").replace(
            "listen = [2001:db8::3]:8080", "listen = 0.0.0.0:8080"
        )
        fronts, skipped = parse_frontends(cluster(text).balancers)
        self.assertEqual([f.name for f in fronts], ["lb1"])
        self.assertEqual(skipped, ("lb2", "lb3"))

    def test_empty_non_terminals_exist(self):
        """Names between the records and the apex exist (NODATA, not NXDOMAIN)."""
        z = zone()
        self.assertIn("_tcp." + NAME, z.existing)
        self.assertIn(ZONE, z.existing)
        self.assertNotIn("test", z.existing)


class AnswerTests(SynchronousTestCase):
    def test_a_records_of_live_balancers(self):
        """A for the service name lists the IPv4 live balancers, AA set, TTL from config."""
        r = reply(query(NAME))
        self.assertEqual(r.header.rcode, dnslib.RCODE.NOERROR)
        self.assertEqual(r.header.aa, 1)
        self.assertEqual(sorted(answers(r)), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual({rr.ttl for rr in r.rr}, {7})

    def test_aaaa_records(self):
        """A balancer listening on IPv6 is an AAAA record."""
        r = reply(query(NAME, "AAAA"))
        self.assertEqual(answers(r, "AAAA"), ["2001:db8::3"])

    def test_dead_balancers_left_out(self):
        """Only the live balancers are answered."""
        r = reply(query(NAME), live=frozenset({"lb2"}))
        self.assertEqual(answers(r), ["192.0.2.2"])

    def test_rotation(self):
        """Successive rotations shift the order; period is the record count."""
        z = zone()
        first = respond(z, query(NAME), 0)
        second = respond(z, query(NAME), 1)
        third = respond(z, query(NAME), 2)
        self.assertEqual(first.period, 2)
        self.assertEqual(answers(parse(first.data)), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(answers(parse(second.data)), ["192.0.2.2", "192.0.2.1"])
        self.assertEqual(third.data, first.data)

    def test_id_and_question_echoed(self):
        """The response carries the query ID, RD bit and the question with its case."""
        r = reply(query("ApP.Cluster.TEST", qid=999))
        self.assertEqual(r.header.id, 999)
        self.assertEqual(r.header.rd, 1)
        self.assertEqual(r.q.qname.label, (b"ApP", b"Cluster", b"TEST"))
        self.assertEqual(len(answers(r)), 2)

    def test_srv_http(self):
        """_http._tcp SRV points at per-balancer names with glue, which also resolve."""
        r = reply(query("_http._tcp." + NAME, "SRV"))
        srv = sorted((rr.rdata.port, str(rr.rdata.target)) for rr in r.rr)
        self.assertEqual(
            srv,
            [(8080, f"lb1.{NAME}."), (8080, f"lb2.{NAME}."), (8080, f"lb3.{NAME}.")],
        )
        glue = sorted(str(rr.rdata) for rr in r.ar)
        self.assertEqual(glue, ["192.0.2.1", "192.0.2.2", "2001:db8::3"])
        self.assertEqual(answers(reply(query(f"lb3.{NAME}", "AAAA")), "AAAA"), ["2001:db8::3"])

    def test_srv_https(self):
        """_https._tcp SRV lists only balancers with https, on their https port."""
        r = reply(query("_https._tcp." + NAME, "SRV"))
        self.assertEqual([(rr.rdata.port, str(rr.rdata.target)) for rr in r.rr], [(8443, f"lb1.{NAME}.")])

    def test_no_https_srv_without_https(self):
        """Without any https balancer, _https._tcp is NXDOMAIN."""
        text = CONFIG.replace("https = 192.0.2.1:8443\ntls_cert = c.pem\ntls_key = k.pem\n", "")
        result = respond(zone(text=text), query("_https._tcp." + NAME, "SRV"))
        self.assertEqual(parse(result.data).header.rcode, dnslib.RCODE.NXDOMAIN)

    def test_soa_and_ns_at_apex(self):
        """The apex has SOA and NS; the NS name resolves to the DNS address (glue)."""
        soa = reply(query(ZONE, "SOA"))
        self.assertEqual(str(soa.rr[0].rdata.mname), f"ns1.{ZONE}.")
        ns = reply(query(ZONE, "NS"))
        self.assertEqual(answers(ns, "NS"), [f"ns1.{ZONE}."])
        self.assertEqual([str(rr.rdata) for rr in ns.ar], ["127.0.0.1"])
        self.assertEqual(answers(reply(query(f"ns1.{ZONE}"))), ["127.0.0.1"])

    def test_nxdomain_with_soa(self):
        """Unknown names in the zone are NXDOMAIN with the SOA in authority."""
        r = reply(query("nope." + NAME))
        self.assertEqual(r.header.rcode, dnslib.RCODE.NXDOMAIN)
        self.assertEqual(r.header.aa, 1)
        self.assertEqual([rr.rtype for rr in r.auth], [dnslib.QTYPE.SOA])
        self.assertEqual(str(r.auth[0].rname), ZONE + ".")

    def test_nodata_with_soa(self):
        """Existing names asked for other types get NOERROR, no answer, SOA."""
        for name, qtype in [(NAME, "MX"), ("_tcp." + NAME, "A"), (NAME, "SRV")]:
            r = reply(query(name, qtype))
            self.assertEqual((r.header.rcode, len(r.rr)), (dnslib.RCODE.NOERROR, 0), name)
            self.assertEqual([rr.rtype for rr in r.auth], [dnslib.QTYPE.SOA])

    def test_refused_outside_zone(self):
        """Names outside the zone are REFUSED without AA."""
        for name in ["example.com", "test", "xcluster.test"]:
            r = reply(query(name))
            self.assertEqual(r.header.rcode, dnslib.RCODE.REFUSED, name)
            self.assertEqual(r.header.aa, 0)

    def test_refused_other_class_and_transfers(self):
        """CHAOS class queries and zone transfers are REFUSED."""
        q = DNSRecord.question(NAME, "TXT", "CH")
        self.assertEqual(reply(bytes(q.pack())).header.rcode, dnslib.RCODE.REFUSED)
        self.assertEqual(reply(query(ZONE, "AXFR")).header.rcode, dnslib.RCODE.REFUSED)

    def test_any_minimal(self):
        """ANY gets a single HINFO "RFC8482" record (RFC 8482)."""
        r = reply(query(NAME, "ANY"))
        self.assertEqual(len(r.rr), 1)
        self.assertEqual(r.rr[0].rtype, dnslib.QTYPE.HINFO)
        self.assertEqual(r.rr[0].rdata.data, b"\x07RFC8482\x00")

    def test_edns_echoed(self):
        """A query with OPT gets an OPT back; one without gets none."""
        self.assertEqual([rr.rtype for rr in reply(query(NAME, edns=4096)).ar], [dnslib.QTYPE.OPT])
        self.assertEqual(reply(query(NAME)).ar, [])

    def test_edns_do_bit_and_size(self):
        """The DO bit is copied back and we advertise a 1232-byte payload."""
        q = DNSRecord.question(NAME)
        q.add_ar(EDNS0(udp_len=4096, flags="do"))
        opt = reply(bytes(q.pack())).ar[0]
        self.assertEqual((opt.rclass, (opt.ttl >> 15) & 1), (1232, 1))

    def test_edns_bad_version(self):
        """EDNS version 1 is answered BADVERS."""
        q = DNSRecord.question(NAME)
        q.add_ar(EDNS0(version=1))
        r = reply(bytes(q.pack()))
        self.assertEqual(r.header.rcode, 0)
        self.assertEqual(r.ar[0].ttl >> 24, 1)

    def test_notimp(self):
        """Opcodes other than QUERY get NOTIMP with the ID echoed."""
        q = DNSRecord.question(NAME)
        q.header.opcode = 2
        q.header.id = 77
        r = reply(bytes(q.pack()))
        self.assertEqual((r.header.id, r.header.rcode, r.header.opcode), (77, dnslib.RCODE.NOTIMP, 2))

    def test_formerr_on_question_count(self):
        """QDCOUNT 0 or 2 is FORMERR."""
        two = DNSRecord.question(NAME)
        two.add_question(DNSRecord.question(ZONE).q)
        zero = query(NAME)[:4] + b"\x00\x00" + query(NAME)[6:12]
        for data in [bytes(two.pack()), zero]:
            self.assertEqual(reply(data).header.rcode, dnslib.RCODE.FORMERR)

    def test_responses_dropped(self):
        """Packets with QR set, and ones shorter than a header, get nothing."""
        data = bytearray(query(NAME))
        data[2] |= 0x80
        self.assertIsNone(respond(zone(), bytes(data)))
        self.assertIsNone(respond(zone(), b"\x00" * 11))

    def test_truncated_over_udp_limit(self):
        """An answer over 512 bytes is sent with TC and no records over UDP, whole over TCP."""
        text = CONFIG + "".join(
            f"\n[balancer:many{i}]\nlisten = 198.51.100.{i}:80\n" for i in range(1, 41)
        )
        z = zone(frozenset(["lb1", "lb2"] + [f"many{i}" for i in range(1, 41)]), text)
        udp = parse(respond(z, query(NAME)).data)
        self.assertEqual((udp.header.tc, len(udp.rr)), (1, 0))
        self.assertEqual(udp.q.qname, parse(query(NAME)).q.qname)
        big = parse(respond(z, query(NAME, edns=4096)).data)
        self.assertEqual((big.header.tc, len(big.rr)), (0, 42))
        tcp = parse(respond(z, query(NAME), tcp=True).data)
        self.assertEqual((tcp.header.tc, len(tcp.rr)), (0, 42))

    def test_glue_dropped_before_truncating(self):
        """When only the additional glue does not fit, it is dropped without TC."""
        text = CONFIG + "".join(
            f"\n[balancer:many{i}]\nlisten = 198.51.100.{i}:80\n" for i in range(1, 9)
        )
        live = frozenset(["lb1", "lb2"] + [f"many{i}" for i in range(1, 9)])
        r = parse(respond(zone(live, text), query("_http._tcp." + NAME, "SRV")).data)
        self.assertEqual((r.header.tc, len(r.rr), len(r.ar)), (0, 10, 0))

    def test_truncated_reply(self):
        """truncated() echoes ID and question with TC set and no records."""
        r = parse(truncated(query(NAME, qid=5)))
        self.assertEqual((r.header.id, r.header.tc, r.header.qr, len(r.rr)), (5, 1, 1, 0))
        self.assertEqual(str(r.q.qname), NAME + ".")
        self.assertEqual(parse(truncated(b"\x00\x05\x01\x00" + b"\x00" * 8)).header.tc, 1)


class MalformedTests(SynchronousTestCase):
    def test_malformed_corpus(self):
        """Each malformed query gets a FORMERR with the ID echoed, never an exception."""
        for label, data in MALFORMED.items():
            result = respond(zone(), data)
            self.assertIsNotNone(result, label)
            header = parse(result.data[:12]).header
            self.assertEqual(header.rcode, dnslib.RCODE.FORMERR, label)
            self.assertEqual(header.id, struct.unpack("!H", data[:2])[0], label)

    def test_pointer_chain(self):
        """A very long pointer chain (RecursionError inside dnslib) is FORMERR."""
        data = pointer_chain_query(5000)
        result = respond(zone(), data)
        self.assertEqual(parse(result.data[:12]).header.rcode, dnslib.RCODE.FORMERR)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=600))
    def test_random_bytes(self, data):
        """Random bytes never raise: the result is None or a parseable header."""
        result = respond(zone(), data)
        if result is not None:
            self.assertGreaterEqual(len(result.data), 12)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=300))
    def test_random_question(self, tail):
        """Random bytes after a valid query header never raise."""
        result = respond(zone(), HEADER + tail)
        self.assertIsNotNone(result)

