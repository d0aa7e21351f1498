"""
Response rate limiting: a token bucket per client network, time passed in.

Clients are grouped by IPv4 /24 and IPv6 /56, so one host cannot escape the
limit by hopping addresses within its network, and a spoofed victim cannot be
flooded with our answers.  Over the limit a response is dropped, except every
C{slip}-th one, which is sent as an empty truncated answer: a real client
behind a spoofed flood then retries over TCP, which is not rate limited.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Dict, List

from attrs import define, field


class Verdict(enum.Enum):
    ALLOW = "allow"
    DROP = "drop"
    SLIP = "slip"


def client_network(host: str) -> str:
    """
    The key a client is limited under: its /24 (IPv4, including IPv4-mapped
    IPv6) or /56 (IPv6).
    """
    if ":" not in host:
        return host[: host.rfind(".")]
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        mapped = str(ip.ipv4_mapped)
        return mapped[: mapped.rfind(".")]
    return ip.packed[:7].hex()


@define
class RateLimiter:
    """
    C{rate} responses per second per client network, with a burst of one
    second's worth.  At most C{max_clients} networks are tracked: beyond
    that, the networks whose bucket has refilled are forgotten (they would
    be allowed anyway), and if that is not enough, all are.
    """

    rate: float
    slip: int
    max_clients: int = 100_000
    # network -> [tokens, last update, responses limited so far]
    _buckets: Dict[str, List[float]] = field(factory=dict, init=False)

    def check(self, host: str, now: float) -> Verdict:
        """
        Account for one response to C{host} at time C{now}.
        """
        key = client_network(host)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._forget(now)
            self._buckets[key] = [self.rate - 1.0, now, 0]
            return Verdict.ALLOW
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.rate:
            tokens = self.rate
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return Verdict.ALLOW
        bucket[0] = tokens
        bucket[2] += 1
        if self.slip and bucket[2] % self.slip == 0:
            return Verdict.SLIP
        return Verdict.DROP

    def _forget(self, now: float) -> None:
        full = [
            key
            for key, (tokens, last, _) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.rate
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_clients:
            self._buckets.clear()

    def tracked(self) -> int:
        """
        How many client networks are being tracked.
        """
        return len(self._buckets)
