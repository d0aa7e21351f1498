"""
Shared fixtures for the DNS tests (no tests here): a cluster config, zones
and query bytes.
"""

from __future__ import annotations

import struct
from typing import FrozenSet, Optional

import dnslib
from dnslib import EDNS0, DNSRecord

from appliance.config import ClusterConfig
from appliance.dns.zone import Zone, ZoneSettings, build_zone, parse_frontends

CONFIG = """
[cluster]
name = app.cluster.test
secret = test-secret

[dns]
listen = 127.0.0.1:5353
zone = cluster.test
ttl = 7
check_interval = 2s
rrl_rate = 5
rrl_slip = 2

[balancer:lb1]
listen = 192.0.2.1:8080
https = 192.0.2.1:8443
tls_cert = c.pem
tls_key = k.pem

[balancer:lb2]
listen = 192.0.2.2:8080

[balancer:lb3]
listen = [2001:db8::3]:8080

[node:s1]
http = 127.0.0.1:8081
replication = 127.0.0.1:8791
machine = m1
rack = r1
"""

NAME = "app.cluster.test"
ZONE = "cluster.test"
ALL = frozenset({"lb1", "lb2", "lb3"})


def cluster(text: str = CONFIG) -> ClusterConfig:
    return ClusterConfig.from_string(text, "test.ini")


def zone(live: Optional[FrozenSet[str]] = None, text: str = CONFIG) -> Zone:
    config = cluster(text)
    fronts, _ = parse_frontends(config.balancers)
    settings = ZoneSettings(
        zone=config.dns.zone,
        name=config.cluster.name,
        ttl=config.dns.ttl,
        ns_address=config.dns.listen.host,
        serial=42,
    )
    return build_zone(settings, fronts, ALL if live is None else live)


def query(
    name: str, qtype: str = "A", qid: int = 4321, edns: Optional[int] = None, rd: bool = True
) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    q.header.rd = int(rd)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return bytes(q.pack())


def parse(data: bytes) -> DNSRecord:
    return DNSRecord.parse(data)


def answers(record: DNSRecord, qtype: str = "A"):
    return [str(rr.rdata) for rr in record.rr if rr.rtype == getattr(dnslib.QTYPE, qtype)]


def _name(labels) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


#: A query header: ID 0x1234, RD, one question.
HEADER = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)

#: Malformed queries whose header is fine: each must get FORMERR.
MALFORMED = {
    "truncated question": HEADER + b"\x03ap",
    "no question type": HEADER + _name([b"app"]),
    "pointer loop": HEADER + b"\xc0\x0c\x00\x01\x00\x01",
    "forward pointer": HEADER + b"\xc0\x20\x00\x01\x00\x01",
    "label type 01": HEADER + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01",
    "name over 255": HEADER + _name([b"a" * 63] * 5) + b"\x00\x01\x00\x01",
    "count says 2 answers": struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 2, 0, 0)
    + _name([b"app"]) + b"\x00\x01\x00\x01",
    "bad utf8 label": HEADER + b"\x02\xff\xfe\x00\x00\x01\x00\x01",
}


def pointer_chain_query(depth: int) -> bytes:
    """
    A query whose second answer record is named by a chain of C{depth}
    compression pointers, each to the one before, hidden in the first
    record's NULL rdata: deep enough to exhaust dnslib's recursion.
    """
    question = _name([b"app", b"cluster", b"test"]) + b"\x00\x01\x00\x01"
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 2, 0, 0)
    rr_head = b"\x00" + struct.pack("!HHIH", 10, 1, 0, 1 + 2 * depth)
    base = 12 + len(question) + len(rr_head)
    chain = bytearray(b"\x00")
    previous = base
    for _ in range(depth):
        here = base + len(chain)
        chain += struct.pack("!H", 0xC000 | previous)
        previous = here
    second = struct.pack("!H", 0xC000 | previous) + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    return header + question + rr_head + bytes(chain) + second
