"""
The counts a component keeps on its hot path for the metrics: plain ints,
dicts and this small bucket array, read at scrape time by
L{appliance.metrics} (which alone imports prometheus_client), so that a
request never touches a metrics object and a scrape never walks sessions.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, List, Tuple

#: Upper bounds (seconds) for round trips and request times: 0.5 ms to 10 s.
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Upper bounds (bytes) for session sizes: 256 B to 16 MiB.
BYTES = tuple(256 * 4**i for i in range(9))


class Histogram:
    """
    How many observations fell at or under each bound (and over the last),
    and their sum.  L{forget} takes an observation back, so a histogram of
    what exists now (session sizes) follows changes without a recount.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]):
        self.bounds: Tuple[float, ...] = tuple(bounds)
        self.counts: List[int] = [0] * (len(self.bounds) + 1)
        self.sum = 0

    def observe(self, value) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def forget(self, value) -> None:
        self.counts[bisect_left(self.bounds, value)] -= 1
        self.sum -= value

    def move(self, old, new) -> None:
        """
        L{forget} C{old} and L{observe} C{new}, in one call (a session
        whose size changed).
        """
        bounds = self.bounds
        i = bisect_left(bounds, old)
        j = bisect_left(bounds, new)
        if i != j:
            counts = self.counts
            counts[i] -= 1
            counts[j] += 1
        self.sum += new - old

    def cumulative(self) -> List[Tuple[float, int]]:
        """
        (upper bound, observations at or under it) per bucket, the last
        bound infinite: Prometheus's C{le} buckets.
        """
        out = []
        total = 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            out.append((bound, total))
        return out
