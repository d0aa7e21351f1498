"""
Bounded property-based fuzzing of the PB and DNS edges: the replication wire
decoders and the avatar that applies them, the DNS responder over UDP and
TCP.  Arbitrary input and mutations of valid input: nothing crashes, every
refusal is the documented error, nothing of a refused batch is applied.
"""

from __future__ import annotations

import json
import struct

import dnslib
from dnslib import EDNS0, DNSHeader, DNSQuestion, DNSRecord, EDNSOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from appliance.core.session import Changes, Delta, Full, Remove, Touch
from appliance.core.store import Result
from appliance.dns.answer import TYPE_OPT, query_edns, respond
from appliance.dns.protocol import DnsStreamFactory
from appliance.dns.responder import Responder
from appliance.dns.rrl import RateLimiter
from appliance.replication import peer, wire

from .test_dns_support import NAME, ZONE, zone
from .test_guard import HELLO, deep_login, many_strings
from .test_peer import make_node

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NODES = ("s1", "s2", "s3")
SIDS = ["A" * 22, "B" * 22, "C" * 22, "D" * 22]

# -- the replication wire ------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
keys = st.text(min_size=1, max_size=6)
#: Value bytes: JSON, with now and then one nested deeper than the parser recurses.
encoded_values = st.dictionaries(
    keys,
    st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),
    ),
    max_size=3,
)
sids = st.sampled_from(SIDS)
names = st.sampled_from(NODES)
small = st.integers(0, 2**32 - 1)


def records(primary=names):
    delta = st.builds(
        Delta, sids, small, st.integers(0, 2**64 - 1), primary, st.none() | names, encoded_values,
        st.lists(keys, max_size=3).map(tuple),
    )
    full = st.builds(
        Full, sids, small, st.integers(0, 2**64 - 1), primary, st.none() | names,
        st.floats(0.5, 1e6), st.floats(0, 1e6), encoded_values,
    )
    return st.one_of(delta, full, st.builds(Remove, sids, small), st.builds(Touch, sids, small))


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """
    C{data} with a few bytes flipped, inserted, deleted or cut off.
    """
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "length"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and out:
            del out[at : at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del out[at:]
        elif op == "length" and len(out) >= at + 4:
            out[at : at + 4] = struct.pack("!I", draw(st.sampled_from([0, 1, 2**16, 2**31, 2**32 - 1])))
    return bytes(out)


@st.composite
def batches(draw, primary=names):
    """
    A batch as bytes: valid, mutated from a valid one, or random.
    """
    valid = wire.encode(draw(st.lists(records(primary), min_size=1, max_size=4)))
    return draw(st.one_of(st.just(valid), mutated(valid), st.binary(max_size=120).map(lambda b: b"\x01" + b)))


#: What PB may hand an avatar: any plain value jelly lets through.
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=30) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=6,
)


class WireFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(batches())
    def test_decode(self, data):
        """A batch decodes to records that encode back to the same bytes, or is refused with WireError."""
        try:
            decoded = wire.decode(data, NODES)
        except wire.WireError:
            return
        self.assertEqual(wire.encode(decoded), data)

    @FUZZ
    @given(st.one_of(plain, st.binary(max_size=200), st.lists(st.tuples(sids, small, small), max_size=5).map(wire.encode_digest).flatmap(mutated)))
    def test_decode_digest(self, data):
        """A digest decodes to (sid, version, epoch) entries that encode back, or is refused with WireError."""
        try:
            entries = wire.decode_digest(data)
        except wire.WireError:
            return
        self.assertEqual(wire.encode_digest(entries), data)

    @FUZZ
    @given(st.one_of(plain, st.binary(max_size=8)), st.integers(0, 8))
    def test_decode_results(self, data, count):
        """Results decode to exactly count Result codes (None for an unknown one), or are refused with WireError."""
        try:
            results = wire.decode_results(data, count)
        except wire.WireError:
            return
        self.assertEqual(len(results), count)
        self.assertTrue(all(r is None or isinstance(r, Result) for r in results))
        self.assertEqual([r for r in results if r is not None], [Result(b) for b in data if b in set(Result)])

    @FUZZ
    @given(st.one_of(plain, batches().map(wire.split), st.lists(st.one_of(st.binary(max_size=40), plain), max_size=4)))
    def test_decode_hand_over(self, chunks):
        """A hand-over answer is one full state, or refused with WireError."""
        try:
            full = peer.decode_hand_over(chunks, NODES, 10_000)
        except wire.WireError:
            return
        self.assertIsInstance(full, Full)

    @FUZZ
    @given(st.one_of(plain, st.lists(sids, max_size=4).map(lambda s: "".join(s).encode()).flatmap(mutated)))
    def test_decode_sids(self, data):
        """A sid list is whole valid sids, or refused with WireError."""
        try:
            got = peer.decode_sids(data)
        except wire.WireError:
            return
        self.assertEqual("".join(got).encode(), data)


def snapshot(node):
    return {
        sid: (s.values.copy(), s.version, s.epoch, s.primary, s.secondary, s.last_access)
        for sid, s in node.store.sessions.items()
    }


class AvatarFuzzTests(SynchronousTestCase):
    """
    s2's avatar for peer s1, over a store that already holds sessions.
    """

    def avatar(self):
        node, cluster = make_node("s2")
        node.store.apply(Full(SIDS[0], 2, 3, "s1", "s2", 60.0, 0.0, {"a": b"1"}), 0.0)
        node.store.apply(Full(SIDS[1], 1, 1, "s3", "s2", 60.0, 0.0, {"b": b"[2]"}), 0.0)
        node.store.create(SIDS[2], Changes({"c": b'"x"'}), "s1", 0.0)
        return node, peer.PeerAvatar("s1", 5, node, cluster.node_names, node.limit)

    @FUZZ
    @given(st.one_of(batches(primary=st.sampled_from(["s1", "s1", "s3"])).map(wire.split), plain))
    def test_replicate(self, chunks):
        """A batch is applied and answered one result per record, or refused whole: the store is unchanged."""
        node, avatar = self.avatar()
        before = snapshot(node)
        try:
            answer = avatar.perspective_replicate(chunks)
        except peer.Refused:
            self.assertEqual(snapshot(node), before)
            return
        records = wire.decode(wire.join(chunks, node.limit), NODES)
        self.assertEqual(len(wire.decode_results(answer, len(records))), len(records))
        self.assertTrue(all(getattr(r, "primary", "s1") == "s1" for r in records))

    @FUZZ
    @given(st.one_of(plain, st.lists(st.tuples(sids, small, small), max_size=4).map(wire.encode_digest).flatmap(mutated).map(lambda d: [d])))
    def test_digest(self, chunks):
        """A digest is answered with a valid sid list, or refused with Refused."""
        node, avatar = self.avatar()
        try:
            answer = avatar.perspective_digest(chunks)
        except peer.Refused:
            return
        peer.decode_sids(wire.join(answer, node.limit))

    @FUZZ
    @given(st.one_of(plain, st.lists(sids, max_size=4).map(wire.encode_sids).flatmap(mutated).map(lambda d: [d])))
    def test_locate(self, chunks):
        """A look-up is answered with copies that decode, or refused with Refused; nothing changes."""
        node, avatar = self.avatar()
        before = snapshot(node)
        try:
            chunks_back = avatar.perspective_locate(chunks)
        except peer.Refused:
            pass
        else:
            wire.decode_copies(wire.join(chunks_back, node.limit), NODES)
        self.assertEqual(snapshot(node), before)

    @FUZZ
    @given(st.one_of(plain, sids), st.one_of(plain, st.integers(-2, 2**65)))
    def test_hand_over(self, sid, dead):
        """hand_over takes only a valid sid and incarnation; anything else is Refused and changes nothing."""
        node, avatar = self.avatar()
        before = snapshot(node)
        try:
            d = avatar.perspective_hand_over(sid, dead)
        except peer.Refused:
            self.assertEqual(snapshot(node), before)
            return
        self.assertIn(sid, SIDS)
        d.addErrback(lambda f: f.trap(peer.NoSuchSession, peer.NotNow, peer.PrimaryAlive))

    @FUZZ
    @given(plain, st.one_of(plain, st.integers(-2, 2**65)))
    def test_vote(self, server, incarnation):
        """vote takes only a node name and an incarnation; anything else is Refused."""
        node, avatar = self.avatar()
        try:
            d = avatar.perspective_vote(server, incarnation)
        except peer.Refused:
            return
        self.assertIn(server, NODES)
        d.addErrback(lambda f: f.trap(peer.Refused, peer.NotNow))


class LoginNameFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.one_of(st.binary(max_size=40), st.text(max_size=40), st.tuples(names, st.integers(0, 2**70)).map(lambda t: peer.username(*t))))
    def test_parse_username(self, user):
        """A login name is a configured node and an incarnation of at most 20 digits, or nothing."""
        who = peer.parse_username(user, NODES)
        if who is not None:
            self.assertIn(who[0], NODES)
            self.assertTrue(type(who[1]) is int and 0 <= who[1] < 10**20)


class CopiesFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.one_of(plain, st.lists(st.tuples(sids, small, st.integers(0, 2**64 - 1), names, st.integers(0, 2**64 - 1)), max_size=4).map(wire.encode_copies).flatmap(mutated)))
    def test_decode_copies(self, data):
        """A copy list decodes to entries that encode back to the same bytes, or is refused with WireError."""
        try:
            copies = wire.decode_copies(data, NODES)
        except wire.WireError:
            return
        self.assertEqual(wire.encode_copies(copies), data)


class GuardFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from([HELLO, deep_login(40), many_strings(50)]).flatmap(mutated)), max_size=8))
    def test_prelogin_stream(self, chunks):
        """Any bytes before login are parsed or close the connection; nothing raises out of dataReceived or logs a failure."""
        node, cluster = make_node()
        factory = peer.server_factory(node, cluster.node_names, cluster.cluster.secret, node.limit, Clock(), 5.0)
        broker = factory.buildProtocol(None)
        transport = StringTransport()
        broker.makeConnection(transport)
        for chunk in chunks:
            broker.dataReceived(chunk)
        broker.connectionLost(None)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(node.store), 0)


# -- DNS -------------------------------------------------------------------

qnames = st.one_of(
    st.sampled_from([NAME, ZONE, "ns1." + ZONE, "_http._tcp." + NAME, "nope." + NAME, "example.com", NAME.upper()]),
    st.lists(st.text("abc-_.", min_size=1, max_size=10), min_size=1, max_size=4).map(".".join),
)
qtypes = st.sampled_from(["A", "AAAA", "SOA", "NS", "SRV", "ANY", "MX", "AXFR", "TXT"])


@st.composite
def dns_queries(draw) -> bytes:
    """
    A query as dnslib would build it (any opcode, flags, EDNS version, DO
    bit and options), valid or mutated.
    """
    header = DNSHeader(
        id=draw(st.integers(0, 65535)), opcode=draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 15])), rd=draw(st.integers(0, 1))
    )
    qname = draw(qnames)
    try:
        question = DNSQuestion(qname, getattr(dnslib.QTYPE, draw(qtypes)))
    except Exception:
        question = DNSQuestion(NAME)
    q = DNSRecord(header, q=question)
    if draw(st.booleans()):
        q.add_ar(
            EDNS0(
                udp_len=draw(st.integers(0, 65535)),
                version=draw(st.sampled_from([0, 0, 1])),
                flags=draw(st.sampled_from(["", "do"])),
                opts=[EDNSOption(draw(st.integers(0, 65535)), draw(st.binary(max_size=8)))] if draw(st.booleans()) else [],
            )
        )
    data = bytes(q.pack())
    return draw(st.one_of(st.just(data), mutated(data), st.binary(max_size=80)))


#: Every rcode the responder documents (16: BADVERS, for EDNS versions other than 0).
DOCUMENTED = {
    dnslib.RCODE.NOERROR, dnslib.RCODE.NXDOMAIN, dnslib.RCODE.REFUSED, dnslib.RCODE.FORMERR, dnslib.RCODE.NOTIMP, 16,
}


class DnsFuzzTests(SynchronousTestCase):
    def check(self, query: bytes, reply):
        """
        The documented answer for C{query}: nothing for what is not a
        query; else the same ID, QR set, a documented rcode, and an OPT
        record exactly when the query had one.
        """
        if len(query) < 12 or query[2] & 0x80:
            self.assertIsNone(reply)
            return
        self.assertIsNotNone(reply)
        self.assertEqual(reply[:2], query[:2])
        self.assertTrue(reply[2] & 0x80)
        opcode = (query[2] >> 3) & 0xF
        self.assertEqual((reply[2] >> 3) & 0xF, opcode)
        parsed = DNSRecord.parse(reply)
        opts = [rr for rr in parsed.ar if rr.rtype == TYPE_OPT]
        self.assertLessEqual(len(opts), 1)
        rcode = (reply[3] & 0xF) | ((opts[0].ttl >> 24) << 4 if opts else 0)
        if opcode != 0:
            self.assertEqual((rcode, reply[2] & 0x01), (dnslib.RCODE.NOTIMP, 0))
        elif query[4:6] != b"\x00\x01":
            self.assertEqual(rcode, dnslib.RCODE.FORMERR)
        self.assertIn(rcode, DOCUMENTED)
        self.assertEqual(bool(opts), query_edns(query) is not None)

    @FUZZ
    @given(dns_queries())
    def test_udp(self, query):
        """Any datagram gets nothing (not a query) or the documented answer, with OPT when the query had it, cached or not."""
        responder = Responder(zone(), RateLimiter(10**9, 2))
        self.check(query, responder.udp(query, "192.0.2.1", 0.0))
        self.check(query, responder.udp(query, "192.0.2.1", 0.0))

    @FUZZ
    @given(dns_queries())
    def test_respond_matches_responder(self, query):
        """The cached responder answers exactly as respond() does (but for rotation)."""
        reply = respond(zone(), query, 0, True)
        self.assertEqual(Responder(zone()).tcp(query), None if reply is None else reply.data)

    @FUZZ
    @given(st.lists(st.one_of(dns_queries().map(lambda q: struct.pack("!H", len(q)) + q), st.binary(max_size=20)), max_size=6))
    def test_tcp_stream(self, frames):
        """Any byte stream over TCP is answered frame by frame or closes the connection; nothing is logged as a failure."""
        factory = DnsStreamFactory(Responder(zone()), Clock())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for frame in frames:
            protocol.dataReceived(frame)
        protocol.connectionLost(None)
        self.assertEqual(factory.connections, 0)
        self.assertEqual(self.flushLoggedErrors(), [])
