"""
Error answers and EDNS (RFC 6891 sections 6.1.1 and 7): FORMERR, NOTIMP and
truncated answers carry an OPT record when the query did; RD is echoed only
for standard queries.  Packets built with dnslib, and dig against a real
responder.
"""

from __future__ import annotations

import dnslib
from dnslib import EDNS0, DNSHeader, DNSRecord
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appliance.dns.answer import TYPE_OPT, UDP_MAXIMUM, query_edns, respond, truncated

from tests.test_dns_e2e import NAME as E2E_NAME, ResponderMixin, free_port
from tests.test_dns_support import MALFORMED, NAME, zone


def with_edns(record: DNSRecord, do: bool = False) -> DNSRecord:
    record.add_ar(EDNS0(udp_len=4096, flags="do" if do else ""))
    return record


def packed(record: DNSRecord) -> bytes:
    return bytes(record.pack())


def answer(data: bytes) -> DNSRecord:
    reply = respond(zone(), data)
    assert reply is not None
    return DNSRecord.parse(reply.data)


def opts(record: DNSRecord):
    return [rr for rr in record.ar if rr.rtype == TYPE_OPT]


class ErrorOptTests(SynchronousTestCase):
    def assertOpt(self, record: DNSRecord, do: bool = False):
        (opt,) = opts(record)
        self.assertEqual((opt.rclass, (opt.ttl >> 16) & 0xFF, bool(opt.ttl & 0x8000)), (UDP_MAXIMUM, 0, do))
        self.assertEqual((record.rr, record.auth), ([], []))

    def test_notimp_with_edns(self):
        """An unknown opcode with EDNS gets NOTIMP with an OPT record (DO echoed) and no RD."""
        for do in (False, True):
            q = with_edns(DNSRecord.question(NAME), do)
            q.header.opcode = 15
            q.header.rd = 1
            r = answer(packed(q))
            self.assertEqual((r.header.rcode, r.header.opcode, r.header.rd, r.header.aa), (dnslib.RCODE.NOTIMP, 15, 0, 0))
            self.assertOpt(r, do)

    def test_notimp_without_edns(self):
        """Without EDNS, NOTIMP has no OPT record; RD is not echoed for opcode NOTIFY either."""
        q = DNSRecord.question(NAME)
        q.header.opcode = 4
        q.header.rd = 1
        r = answer(packed(q))
        self.assertEqual((r.header.rcode, r.header.rd, opts(r)), (dnslib.RCODE.NOTIMP, 0, []))

    def test_formerr_with_edns(self):
        """No question, two questions or two OPT records, with EDNS: FORMERR with one OPT record, RD echoed."""
        empty = with_edns(DNSRecord(DNSHeader(id=7, rd=1)))
        two = with_edns(DNSRecord(DNSHeader(id=8, rd=1), questions=DNSRecord.question(NAME).questions * 2))
        double = with_edns(with_edns(DNSRecord.question(NAME)))
        for q in (empty, two, double):
            r = answer(packed(q))
            self.assertEqual((r.header.rcode, r.header.rd, r.header.id), (dnslib.RCODE.FORMERR, 1, q.header.id))
            self.assertOpt(r)

    def test_formerr_unparseable_body_with_edns(self):
        """A question dnslib cannot parse, followed by an OPT record: FORMERR with OPT."""
        opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"
        bad = MALFORMED["bad utf8 label"]
        data = bad[:10] + b"\x00\x01" + bad[12:] + opt
        self.assertIsNotNone(query_edns(data))
        r = DNSRecord.parse(respond(zone(), data).data)
        self.assertEqual(r.header.rcode, dnslib.RCODE.FORMERR)
        self.assertOpt(r)

    def test_formerr_without_edns(self):
        """Malformed queries without EDNS still get a bare FORMERR header."""
        for name, data in MALFORMED.items():
            r = respond(zone(), data).data
            self.assertEqual((r[3] & 0xF, r[10:12]), (dnslib.RCODE.FORMERR, b"\x00\x00"), name)

    def test_truncated_keeps_opt(self):
        """The rate limiter's truncated answer to an EDNS query carries OPT and the question."""
        r = DNSRecord.parse(truncated(packed(with_edns(DNSRecord.question(NAME), do=True))))
        self.assertEqual((r.header.tc, str(r.q.qname).rstrip(".")), (1, NAME))
        self.assertOpt(r, do=True)
        plain = DNSRecord.parse(truncated(packed(DNSRecord.question(NAME))))
        self.assertEqual(opts(plain), [])

    def test_query_edns_ignores_opt_outside_additional(self):
        """An OPT-typed record in the answer section is not EDNS."""
        q = DNSRecord.question(NAME)
        q.add_answer(EDNS0())
        self.assertIsNone(query_edns(packed(q)))
        self.assertIsNone(query_edns(b"\x00" * 11))


class DigErrorTests(ResponderMixin, TestCase):
    timeout = 60

    def setUp(self):
        return self.start_responder([("lb1", f"127.0.0.1:{free_port()}")])

    @defer.inlineCallbacks
    def test_dig_notimp_and_formerr(self):
        """dig sees an OPT pseudosection in NOTIMP (+opcode=15) and FORMERR (+header-only) answers, no rd on NOTIMP."""
        out = yield self.dig("+opcode=15", "+rec", "+nocookie", E2E_NAME, "A")
        self.assertIn("status: NOTIMP", out)
        self.assertIn("OPT PSEUDOSECTION", out)
        self.assertIn("EDNS: version: 0", out)
        self.assertNotIn(" rd", out.split("flags:")[1].split(";")[0])
        out = yield self.dig("+header-only", "+nocookie")
        self.assertIn("status: FORMERR", out)
        self.assertIn("OPT PSEUDOSECTION", out)
        out = yield self.dig("+opcode=15", "+noedns", E2E_NAME, "A")
        self.assertIn("status: NOTIMP", out)
        self.assertNotIn("OPT PSEUDOSECTION", out)
