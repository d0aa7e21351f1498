"""
The zone the responder serves, as a frozen value built from the config and
the set of live balancers.

Names served (all lower case, no trailing dot; C{zone} is the apex and
C{name} the cluster's service name, which is the apex or inside it)::

    <zone>                 SOA, NS ns1.<zone>   (+ A/AAAA when name == zone)
    ns1.<zone>             A or AAAA of the DNS listen address (glue)
    <name>                 A / AAAA of the live balancers, rotated per query
    _http._tcp.<name>      SRV <balancer>.<name>:<listen port>, live ones
    _https._tcp.<name>     SRV <balancer>.<name>:<https port>, live ones that
                           have https (only when some balancer has https)
    <balancer>.<name>      A / AAAA of that balancer, live or not: it is the
                           name of a host, the SRV sets are what follow health

Nothing here does I/O; L{build_zone} is a pure function.
"""

from __future__ import annotations

import ipaddress
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from attrs import frozen
from dnslib import AAAA, NS, QTYPE, SOA, SRV, A, DNSLabel

TYPE_A = QTYPE.A
TYPE_AAAA = QTYPE.AAAA
TYPE_NS = QTYPE.NS
TYPE_SOA = QTYPE.SOA
TYPE_SRV = QTYPE.SRV

NS_LABEL = "ns1"
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 86400


@frozen
class Frontend:
    """
    A balancer as DNS sees it: a literal IP address, its HTTP port and its
    HTTPS port if it has one.
    """

    name: str
    host: str
    port: int
    https_port: Optional[int] = None

    @property
    def ipv6(self) -> bool:
        return ":" in self.host


@frozen
class ZoneSettings:
    """
    What the zone needs from the config besides the balancers.
    """

    zone: str
    name: str
    ttl: int
    ns_address: Optional[str]
    serial: int = 1


@frozen
class Zone:
    """
    Everything an answer is built from.

    C{records} maps (owner name, qtype) to the record data of that set;
    C{existing} holds every owner name plus the empty non-terminals between
    them and the apex, so that those get NODATA rather than NXDOMAIN.
    """

    zone: str
    ttl: int
    records: Dict[Tuple[str, int], Tuple[object, ...]]
    existing: FrozenSet[str]
    soa: SOA
    # For additional-section glue: owner name -> address records.
    addresses: Dict[str, Tuple[Tuple[int, object], ...]]


def parse_frontends(balancers: Iterable) -> Tuple[Tuple[Frontend, ...], Tuple[str, ...]]:
    """
    Turn L{appliance.config.BalancerConfig}s into L{Frontend}s.

    Only literal, specified IP addresses can be handed out; the names of the
    balancers whose address cannot (a host name, 0.0.0.0, ::) are returned
    second so the caller can log them.
    """
    fronts: List[Frontend] = []
    skipped: List[str] = []
    for b in balancers:
        try:
            ip = ipaddress.ip_address(b.listen.host)
        except ValueError:
            skipped.append(b.name)
            continue
        if ip.is_unspecified:
            skipped.append(b.name)
            continue
        https = b.https.port if b.https is not None else None
        fronts.append(Frontend(b.name.lower(), ip.compressed, b.listen.port, https))
    return tuple(fronts), tuple(skipped)


def frontend_host(front: Frontend, name: str) -> str:
    """
    The per-balancer name that SRV records point at.
    """
    return f"{front.name}.{name}"


def _address_record(host: str) -> Tuple[int, object]:
    if ":" in host:
        return TYPE_AAAA, AAAA(host)
    return TYPE_A, A(host)


def build_zone(
    settings: ZoneSettings, fronts: Sequence[Frontend], live: FrozenSet[str]
) -> Zone:
    """
    Build the zone for the frontends whose names are in C{live}.

    The caller decides what "live" means (including failing open); this
    function only lays the records out.
    """
    zone, name = settings.zone, settings.name
    records: Dict[Tuple[str, int], List[object]] = {}

    def add(owner: str, qtype: int, rdata: object) -> None:
        records.setdefault((owner, qtype), []).append(rdata)

    ns_name = f"{NS_LABEL}.{zone}"
    soa = SOA(
        mname=ns_name + ".",
        rname=f"hostmaster.{zone}.",
        times=(settings.serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, settings.ttl),
    )
    add(zone, TYPE_SOA, soa)
    add(zone, TYPE_NS, NS(ns_name + "."))
    if settings.ns_address is not None:
        add(ns_name, *_address_record(settings.ns_address))

    any_https = any(f.https_port is not None for f in fronts)
    live_fronts = [f for f in fronts if f.name in live]
    for f in live_fronts:
        add(name, *_address_record(f.host))
        target = DNSLabel(frontend_host(f, name) + ".")
        add(f"_http._tcp.{name}", TYPE_SRV, SRV(10, 10, f.port, target))
        if f.https_port is not None:
            add(f"_https._tcp.{name}", TYPE_SRV, SRV(10, 10, f.https_port, target))
    for f in fronts:
        add(frontend_host(f, name), *_address_record(f.host))

    owners = {owner for owner, _ in records} | {name, f"_http._tcp.{name}"}
    if any_https:
        owners.add(f"_https._tcp.{name}")
    existing = set()
    for owner in owners:
        existing.add(owner)
        while owner != zone and "." in owner:
            owner = owner.split(".", 1)[1]
            existing.add(owner)
    addresses: Dict[str, List[Tuple[int, object]]] = {}
    for (owner, qtype), datas in records.items():
        if qtype in (TYPE_A, TYPE_AAAA):
            addresses.setdefault(owner, []).extend((qtype, d) for d in datas)
    return Zone(
        zone=zone,
        ttl=settings.ttl,
        records={k: tuple(v) for k, v in records.items()},
        existing=frozenset(o for o in existing if o == zone or o.endswith("." + zone)),
        soa=soa,
        addresses={k: tuple(v) for k, v in addresses.items()},
    )
