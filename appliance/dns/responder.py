"""
The responder's state: the current zone, round-robin positions, the answer
cache and the rate limiter.  No I/O; time is passed in.

A response depends only on the query minus its 2-byte ID (and minus its
EDNS option data), the zone, the rotation and the transport (see
L{appliance.dns.answer.respond} and L{appliance.dns.answer.cache_key}), so
the encoded response is cached under that key and the ID is patched in.
Each cached query keeps its own rotation counter, so every repetition of a
question gets the next order of the balancers.  Replacing
the zone (a balancer came or went) empties the cache.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from appliance.dns.answer import cache_key, respond, truncated
from appliance.dns.rrl import RateLimiter, Verdict
from appliance.dns.zone import Zone

#: Queries longer than this are answered but not cached.
CACHEABLE_QUERY = 512


class Responder:
    """
    Answers queries for one zone.

    C{udp} and C{tcp} return the response bytes, or None to send nothing.

    For the metrics it counts the queries refused by the rate limiter
    (L{rate_limited}, dropped or slipped) and, with C{counting}, the
    responses by RCODE (L{rcodes}, indexed by the code).
    """

    def __init__(
        self, zone: Zone, limiter: Optional[RateLimiter] = None, cache_size: int = 4096, counting: bool = True
    ):
        self._zone = zone
        self.rcodes: Optional[List[int]] = [0] * 16 if counting else None
        self.rate_limited = 0
        self._limiter = limiter
        self._cache_size = cache_size
        # cache_key(query) -> [period, next rotation, responses by rotation]
        self._udp_cache: Dict[object, List] = {}
        self._tcp_cache: Dict[object, List] = {}

    @property
    def zone(self) -> Zone:
        return self._zone

    @zone.setter
    def zone(self, zone: Zone) -> None:
        self._zone = zone
        self._udp_cache = {}
        self._tcp_cache = {}

    @property
    def limiter(self) -> Optional[RateLimiter]:
        return self._limiter

    @limiter.setter
    def limiter(self, limiter: Optional[RateLimiter]) -> None:
        self._limiter = limiter

    def udp(self, query: bytes, host: str, now: float) -> Optional[bytes]:
        """
        The response to a UDP query from C{host} at time C{now}, rate
        limited per client network.
        """
        if len(query) < 12 or query[2] & 0x80:
            return None
        limiter = self._limiter
        if limiter is not None:
            verdict = limiter.check(host, now)
            if verdict is not Verdict.ALLOW:
                self.rate_limited += 1
                if verdict is Verdict.SLIP:
                    return truncated(query)
                return None
        return self._count(self._answer(self._udp_cache, query, False))

    def tcp(self, query: bytes) -> Optional[bytes]:
        """
        The response to a query received over TCP (not rate limited: a TCP
        client has proven its address).
        """
        return self._count(self._answer(self._tcp_cache, query, True))

    def _count(self, response: Optional[bytes]) -> Optional[bytes]:
        rcodes = self.rcodes
        if rcodes is not None and response is not None:
            rcodes[response[3] & 0x0F] += 1
        return response

    def _answer(self, cache: Dict[object, List], query: bytes, tcp: bool) -> Optional[bytes]:
        key = cache_key(query)
        entry = cache.get(key)
        if entry is not None:
            rotation = entry[1]
            entry[1] = rotation + 1 if rotation + 1 < entry[0] else 0
            data = entry[2][rotation]
            if data is None:
                reply = respond(self._zone, query, rotation, tcp)
                data = entry[2][rotation] = reply.data  # type: ignore[union-attr]
            return query[:2] + data[2:]
        reply = respond(self._zone, query, 0, tcp)
        if reply is None:
            return None
        if len(query) <= CACHEABLE_QUERY:
            if len(cache) >= self._cache_size:
                cache.clear()
            responses: List[Optional[bytes]] = [None] * reply.period
            responses[0] = reply.data
            cache[key] = [reply.period, 1 % reply.period, responses]
        return reply.data
