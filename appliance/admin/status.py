"""
This process's part of the status (C{/status.json} on its admin listener):
one dict per kind of service, from its live state and counters, never from
a walk over the sessions (the target is a few milliseconds with a million
sessions on a node).
"""

from __future__ import annotations

import os
from typing import Dict, Optional

from appliance.admin.counters import Snapshot, by_label, total
from appliance.balancer.service import BalancerService
from appliance.dns.service import DnsService
from appliance.server.service import SessionServerService

#: The counts of a node "in the last hour", and the metric each comes from.
HOURLY = {
    "failovers": "appliance_promotions_total",
    "takeovers": "appliance_takeovers_total",
    "fencings": "appliance_replication_fenced_total",
    "resyncs": "appliance_replication_resyncs_total",
}


def _counted(grown: Snapshot, taken: Snapshot, name: str) -> Optional[int]:
    """
    How much metric C{name} grew in the last hour; C{None} when this
    process has no such metric.
    """
    if total(taken, name) is None:
        return None
    return int(round(total(grown, name) or 0.0))


def node_status(server: SessionServerService, taken: Snapshot, grown: Snapshot) -> dict:
    node = server.node
    store = node.store
    if node.draining:
        state = "draining"
    elif server.quorum.may_serve():
        state = "up"
    else:
        # Running but without a lease: cut off from a majority of voters.
        state = "isolated"
    unprotected = total(taken, "appliance_sessions_unprotected")
    return {
        "kind": "node",
        "name": server.name,
        "state": state,
        "incarnation": server.membership.incarnation,
        "sessions": len(store),
        "primaries": store.primaries,
        "backups": store.backups,
        "unprotected": None if unprotected is None else int(unprotected),
        "unreplicated": server.replicator.unreplicated(),
        "replication": server.settings.replication,
        "round_trip": {peer: round(seconds, 6) for peer, seconds in sorted(server.round_trips.items())},
        "peers": {name: link.connected for name, link in sorted(server.links.items()) if name in server.servers},
        "last_hour": {label: _counted(grown, taken, metric) for label, metric in HOURLY.items()},
    }


def _per_second(rates: Optional[Snapshot], name: str, **labels: str) -> Optional[float]:
    if rates is None:
        return None
    value = total(rates, name, **labels)
    return None if value is None else round(value, 3)


def balancer_status(service: BalancerService, now: float, rates: Optional[Snapshot]) -> dict:
    balancer = service.balancer
    servers: Dict[str, str] = {}
    sticky = 0
    if balancer is not None:
        for name, state in sorted(balancer.nodes.states.items()):
            servers[name] = "silent" if state.silent else "up" if state.available(now) else "down"
        sticky = len(balancer.sticky_table)
    by_status: Optional[Dict[str, float]] = None
    error_rate: Optional[float] = None
    requests = _per_second(rates, "appliance_balancer_requests_total")
    if rates is not None and requests is not None:
        by_status = {}
        for (code,), value in sorted(by_label(rates, "appliance_balancer_requests_total", "code").items()):
            by_status[code] = round(by_status.get(code, 0.0) + value, 3)
        errors = sum(v for code, v in by_status.items() if code[:1] == "5")
        error_rate = round(errors / requests, 4) if requests else 0.0
    return {
        "kind": "balancer",
        "name": service.config.name,
        "mode": service.config.mode,
        "policy": service.config.policy,
        "requests_per_second": requests,
        "by_status": by_status,
        "error_rate": error_rate,
        "servers": servers,
        "sticky_entries": sticky,
    }


def dns_status(service: DnsService, name: str, rates: Optional[Snapshot]) -> dict:
    records = service.responder.zone.addresses.get(name, ())
    return {
        "kind": "dns",
        "name": name,
        "queries_per_second": _per_second(rates, "appliance_dns_queries_total"),
        "answer": [str(data) for _, data in records],
    }


def process_status(root, now: float, taken: Snapshot, grown: Snapshot, rates: Optional[Snapshot]) -> dict:
    """
    The status of the services of admin root C{root} (one, or none for the
    supervisor), with who answers.
    """
    status = {"section": root.section, "pid": os.getpid(), "counters": bool(taken)}
    for service in root.services:
        if isinstance(service, SessionServerService):
            status.update(node_status(service, taken, grown))
        elif isinstance(service, BalancerService):
            status.update(balancer_status(service, now, rates))
        elif isinstance(service, DnsService):
            status.update(dns_status(service, root.cluster.cluster.name, rates))
    status.setdefault("kind", "supervisor")
    # A process that answers is up; a node may say draining or isolated.
    status.setdefault("state", "up")
    return status
