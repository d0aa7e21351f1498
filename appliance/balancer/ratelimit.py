"""
The per-client limit on new sessions, without I/O (time passed in).

What counts: a request that carried no valid session cookie (by the rule of
L{appliance.cookie.session_cookie}) and whose answer set one, i.e. a
session a server created for that client.  Requests with a valid session
cookie are never counted nor refused; while a client is over its limit, its
requests without one are answered 429 by the balancer.

Each client (an IPv4 address, or an IPv6 /64: one host owns a /64) may
create C{rate} sessions per second with a burst of C{burst}.  The bucket is
kept as one number per client, the time at which it is full again (GCRA),
and only while it is not full.
"""

from __future__ import annotations

import ipaddress
from typing import Dict


def client_key(host: str) -> str:
    """
    What a client is limited under: its IPv4 address (also when mapped
    into IPv6), or its IPv6 /64.
    """
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.packed[:8].hex()


class NewSessionLimit:
    """
    C{rate} new sessions per second per client, bursts of up to C{burst}.
    At most C{max_clients} clients are tracked; beyond that the one charged
    longest ago is forgotten.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000):
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.max_clients = max_clients
        # client -> when its bucket is full again
        self._full_at: Dict[str, float] = {}

    def wait(self, client: str, now: float) -> float:
        """
        How long C{client} must wait before it may create a session (0: it
        may now).
        """
        full_at = self._full_at.get(client)
        if full_at is None:
            return 0.0
        wait = full_at - now - self.tolerance
        return wait if wait > 0 else 0.0

    def charge(self, client: str, now: float) -> None:
        """
        C{client} was given a new session at C{now}.
        """
        full_at = self._full_at.pop(client, now)
        if full_at < now:
            full_at = now
        if len(self._full_at) >= self.max_clients:
            del self._full_at[next(iter(self._full_at))]
        # Re-inserted last: the entry forgotten first is the one charged longest ago.
        self._full_at[client] = full_at + self.interval

    def sweep(self, now: float) -> None:
        """
        Forget the clients whose bucket is full again.
        """
        full = [client for client, full_at in self._full_at.items() if full_at <= now]
        for client in full:
            del self._full_at[client]

    def __len__(self) -> int:
        return len(self._full_at)
