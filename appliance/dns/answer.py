"""
Query bytes in, response bytes out: the whole DNS state machine, without I/O.

L{respond} decides everything a response depends on from the query bytes,
the L{Zone}, a rotation index and whether the transport is TCP.  Because the
result depends on nothing else, a caller may cache it keyed on the query
minus its ID (see L{appliance.dns.responder}).
"""

from __future__ import annotations

import struct
from typing import List, Optional

from attrs import frozen
from dnslib import EDNS0, QTYPE, RCODE, RD, RR, DNSError, DNSHeader, DNSLabel, DNSRecord

from appliance.dns.zone import TYPE_NS, TYPE_SOA, TYPE_SRV, Zone

CLASS_IN = 1
TYPE_OPT = 41
TYPE_ANY = 255
TYPE_AXFR = 252
TYPE_IXFR = 251
RCODE_BADVERS = 16

UDP_MINIMUM = 512
#: The largest UDP payload we advertise and use (the DNS flag day 2020 value).
UDP_MAXIMUM = 1232
TCP_MAXIMUM = 65535

#: HINFO "RFC8482" "": the whole answer to ANY (RFC 8482 section 4.2).
_RFC8482 = RD(b"\x07RFC8482\x00")

_QR = 0x80
_AA = 0x04
_TC = 0x02
_RD = 0x01
_CD = 0x10
_DO = 0x8000

_COUNTS = struct.Struct("!4H")
_RR = struct.Struct("!HHIH")
_OPT = struct.Struct("!BHHIH")  # root name, type, UDP size, TTL, RDLENGTH


@frozen
class Reply:
    """
    A response and how many distinct orders its answer can take.

    C{period} is 1 when nothing in the answer rotates, else the size of the
    rotated set: the response for rotation C{r} equals the one for
    C{r % period}.
    """

    data: bytes
    period: int = 1


def _flags1(query: bytes, extra: int = 0) -> int:
    """
    The first flags byte of a response to C{query}: QR, the query's opcode
    and, for a standard query only, its RD bit (it means nothing for
    other opcodes, RFC 8906 section 8.1.4).
    """
    flags = query[2] & 0x78
    if flags == 0:
        flags |= query[2] & _RD
    return _QR | extra | flags


def _skip_name(data: bytes, offset: int) -> Optional[int]:
    """
    The offset just past the name at C{offset} (a compression pointer
    ends it; none is followed), or None if it runs off the end.
    """
    end = len(data)
    while offset < end:
        n = data[offset]
        if n == 0:
            return offset + 1
        if n & 0xC0 == 0xC0:
            return offset + 2 if offset + 2 <= end else None
        if n > 63:
            return None
        offset += n + 1
    return None


def query_edns(query: bytes) -> Optional[int]:
    """
    The TTL field (extended rcode, version, flags) of the first OPT record
    in the additional section of C{query}, or None when there is none or
    the sections cannot be walked that far.  Reads only framing, so it
    works where the rest of the query cannot be parsed.
    """
    if len(query) < 12:
        return None
    questions, answers, authority, additional = _COUNTS.unpack_from(query, 4)
    offset: Optional[int] = 12
    for _ in range(questions):
        offset = _skip_name(query, offset)  # type: ignore[arg-type]
        if offset is None:
            return None
        offset += 4
    before = answers + authority
    for index in range(before + additional):
        offset = _skip_name(query, offset)  # type: ignore[arg-type]
        if offset is None or offset + 10 > len(query):
            return None
        rtype, _, ttl, rdlength = _RR.unpack_from(query, offset)
        if rtype == TYPE_OPT and index >= before:
            return ttl
        offset += 10 + rdlength
    return None


def _opt_record(edns: int) -> bytes:
    """
    Our OPT record for a response to a query whose OPT carried C{edns}:
    version 0, our UDP size, the query's DO bit echoed.
    """
    return _OPT.pack(0, TYPE_OPT, UDP_MAXIMUM, edns & _DO, 0)


def _error(query: bytes, rcode: int) -> bytes:
    """
    A response of the header alone, plus an OPT record when the query
    carried one (RFC 6891 section 7): for queries too broken to echo, or
    of an opcode we do not implement.
    """
    head = query[:2] + bytes((_flags1(query), rcode & 0xF))
    edns = query_edns(query)
    if edns is None:
        return head + b"\x00" * 8
    return head + b"\x00\x00\x00\x00\x00\x00\x00\x01" + _opt_record(edns)


def _question_end(query: bytes) -> Optional[int]:
    """
    The offset just past the first question if its name is uncompressed and
    well formed, else None.
    """
    offset, length = 12, 0
    end = len(query)
    while offset < end:
        n = query[offset]
        if n == 0:
            offset += 5
            return offset if offset <= end and length + 1 <= 255 else None
        if n > 63:
            return None
        length += n + 1
        offset += n + 1
    return None


def truncated(query: bytes) -> bytes:
    """
    An empty response with TC set, echoing the question when it is simple
    (and with an OPT record if the query had one): what a rate-limited
    client gets to make it retry over TCP.
    """
    head = query[:2] + bytes((_flags1(query, _AA | _TC), 0))
    end = _question_end(query) if query[4:6] == b"\x00\x01" else None
    question = b"" if end is None else query[12:end]
    edns = query_edns(query)
    counts = b"\x00\x00" if end is None else b"\x00\x01"
    if edns is None:
        return head + counts + b"\x00" * 6 + question
    return head + counts + b"\x00\x00\x00\x00\x00\x01" + question + _opt_record(edns)


def cache_key(query: bytes):
    """
    What the response to C{query} depends on, besides zone, rotation and
    transport: the query past its ID, minus the EDNS option data when the
    query is one plain question followed by one well-framed OPT record.

    Options (a client cookie, padding) differ from query to query but do
    not change our response, so leaving them out of the key lets a resolver
    that sends cookies hit the cache too.  Any other shape keys on all the
    bytes (a different type, so the two kinds never collide).
    """
    if query[6:12] != b"\x00\x00\x00\x00\x00\x01" or query[4:6] != b"\x00\x01":
        return query[2:]
    end = _question_end(query)
    if end is None or query[end : end + 3] != b"\x00\x00\x29":
        return query[2:]
    options = end + 11
    size = len(query)
    if options > size or int.from_bytes(query[end + 9 : options], "big") != size - options:
        return query[2:]
    while options < size:
        if options + 4 > size:
            return query[2:]
        options += 4 + int.from_bytes(query[options + 2 : options + 4], "big")
    if options != size:
        return query[2:]
    return (query[2 : end + 9],)


def _in_zone(qname: str, zone: str) -> bool:
    return qname == zone or qname.endswith("." + zone)


def _wire_length(label: DNSLabel) -> int:
    return sum(len(part) + 1 for part in label.label) + 1


def respond(zone: Zone, query: bytes, rotation: int = 0, tcp: bool = False) -> Optional[Reply]:
    """
    The response to C{query}, or None when it must be dropped (too short
    for a header, or a response rather than a query).
    """
    if len(query) < 12 or query[2] & _QR:
        return None
    if (query[2] >> 3) & 0xF != 0:
        return Reply(_error(query, RCODE.NOTIMP))
    if query[4:6] != b"\x00\x01":
        return Reply(_error(query, RCODE.FORMERR))
    try:
        request = DNSRecord.parse(query)
    except (DNSError, RecursionError, Exception):
        # DNSError for what dnslib recognises as malformed, RecursionError
        # for long compression-pointer chains, and anything else a hostile
        # packet provokes: all are the sender's format error.
        return Reply(_error(query, RCODE.FORMERR))
    question = request.q
    if _wire_length(question.qname) > 255 or any(len(p) > 63 for p in question.qname.label):
        return Reply(_error(query, RCODE.FORMERR))

    opts = [rr for rr in request.ar if rr.rtype == TYPE_OPT]
    if len(opts) > 1 or (opts and opts[0].rname.label != ()):
        return Reply(_error(query, RCODE.FORMERR))
    if any(rr.rtype == TYPE_OPT for rr in request.rr + request.auth):
        return Reply(_error(query, RCODE.FORMERR))
    opt = opts[0] if opts else None

    header = DNSHeader(id=request.header.id, qr=1, aa=1, rd=request.header.rd, q=1)
    header.bitmap |= request.header.bitmap & _CD
    response = DNSRecord(header, questions=[question])
    if opt is not None:
        do = "do" if (opt.ttl >> 15) & 1 else ""
        version = (opt.ttl >> 16) & 0xFF
        if version != 0:
            header.aa = 0
            header.rcode = RCODE_BADVERS & 0xF
            response.add_ar(EDNS0(udp_len=UDP_MAXIMUM, ext_rcode=RCODE_BADVERS >> 4, flags=do))
            return Reply(bytes(response.pack()))
        response.add_ar(EDNS0(udp_len=UDP_MAXIMUM, flags=do))

    limit = TCP_MAXIMUM
    if not tcp:
        limit = UDP_MINIMUM
        if opt is not None:
            limit = max(UDP_MINIMUM, min(opt.rclass, UDP_MAXIMUM))

    labels = question.qname.label
    qname = b".".join(labels).lower().decode("utf-8", "replace")
    if any(b"." in part for part in labels):
        qname = "\x00" + qname  # no zone name has a dot inside a label
    qtype = question.qtype
    if question.qclass != CLASS_IN or not _in_zone(qname, zone.zone) or qtype in (
        TYPE_AXFR,
        TYPE_IXFR,
    ):
        header.aa = 0
        header.rcode = RCODE.REFUSED
        return Reply(bytes(response.pack()))

    period = 1
    if qname not in zone.existing:
        header.rcode = RCODE.NXDOMAIN
        response.add_auth(_soa_rr(zone))
    elif qtype == TYPE_ANY:
        response.add_answer(
            RR(question.qname, QTYPE.HINFO, ttl=zone.ttl, rdata=_RFC8482)
        )
    else:
        datas = zone.records.get((qname, qtype))
        if not datas:
            response.add_auth(_soa_rr(zone))
        else:
            if len(datas) > 1:
                period = len(datas)
                r = rotation % period
                datas = datas[r:] + datas[:r]
            for d in datas:
                response.add_answer(RR(question.qname, qtype, ttl=zone.ttl, rdata=d))
            _add_glue(zone, response, qtype, datas)
    return Reply(_fit(response, limit), period)


def _soa_rr(zone: Zone) -> RR:
    return RR(zone.zone + ".", TYPE_SOA, ttl=zone.ttl, rdata=zone.soa)


def _add_glue(zone: Zone, response: DNSRecord, qtype: int, datas) -> None:
    if qtype == TYPE_SRV:
        targets = [str(d.target).rstrip(".").lower() for d in datas]
    elif qtype == TYPE_NS:
        targets = [str(d.label).rstrip(".").lower() for d in datas]
    else:
        return
    seen = set()
    for target in targets:
        if target in seen:
            continue
        seen.add(target)
        for rtype, rdata in zone.addresses.get(target, ()):
            response.add_ar(RR(target + ".", rtype, ttl=zone.ttl, rdata=rdata))


def _fit(response: DNSRecord, limit: int) -> bytes:
    """
    Pack C{response} within C{limit} bytes: drop the additional glue first,
    then the answer and authority with TC set (the client retries over TCP).
    """
    data = response.pack()
    if len(data) <= limit:
        return bytes(data)
    opts: List[RR] = [rr for rr in response.ar if rr.rtype == TYPE_OPT]
    response.ar = opts
    response.set_header_qa()
    data = response.pack()
    if len(data) <= limit:
        return bytes(data)
    response.rr = []
    response.auth = []
    response.header.tc = 1
    response.set_header_qa()
    return bytes(response.pack())
