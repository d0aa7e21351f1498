"""
The counts the status shows, read from the same counters as C{/metrics}
(L{appliance.metrics.registry_for}), and what they were a while ago: a ring
of snapshots, one a minute for "in the last hour" and a few recent ones for
rates per second.  Pure: the caller takes the snapshots and gives the time.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Iterable, Optional, Tuple

from attrs import define, field

#: A sample: (name, sorted (label, value) pairs).
Key = Tuple[str, Tuple[Tuple[str, str], ...]]
Snapshot = Dict[Key, float]

#: Sample suffixes that are no count or level of their own.
_SKIPPED = ("_bucket", "_created")


def snapshot(registry) -> Snapshot:
    """
    Every counter and gauge sample of C{registry} (a prometheus_client
    registry, or anything with its C{collect()}); an empty snapshot without
    one.  A metric with labels but no samples yet is there as zero without
    labels, so that it shows as 0, not as absent.
    """
    taken: Snapshot = {}
    if registry is None:
        return taken
    for family in registry.collect():
        if not family.samples:
            taken[(family.name + "_total" if family.type == "counter" else family.name, ())] = 0.0
        for sample in family.samples:
            if sample.name.endswith(_SKIPPED):
                continue
            taken[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return taken


def total(taken: Snapshot, name: str, **labels: str) -> Optional[float]:
    """
    The sum of the samples named C{name} whose labels include C{labels};
    C{None} when there is no such metric at all (shown as "-").
    """
    found = None
    wanted = set(labels.items())
    for (sample, pairs), value in taken.items():
        if sample == name and wanted <= set(pairs):
            found = (found or 0.0) + value
    return found


def by_label(taken: Snapshot, name: str, *labels: str) -> Dict[Tuple[str, ...], float]:
    """
    The samples named C{name} summed by the values of C{labels}.
    """
    out: Dict[Tuple[str, ...], float] = {}
    for (sample, pairs), value in taken.items():
        if sample == name and pairs:
            mapping = dict(pairs)
            key = tuple(mapping.get(label, "") for label in labels)
            out[key] = out.get(key, 0.0) + value
    return out


def increase(now: Snapshot, then: Snapshot) -> Snapshot:
    """
    How much each counter grew from C{then} to C{now}; a counter that went
    down was reset (its process restarted) and grew by what it holds now.
    """
    out: Snapshot = {}
    for key, value in now.items():
        before = then.get(key, 0.0)
        out[key] = value - before if value >= before else value
    return out


@define
class Ring:
    """
    Snapshots taken at least C{every} seconds apart, the last C{size} of
    them.
    """

    every: float
    size: int
    _taken: Deque[Tuple[float, Snapshot]] = field(factory=deque)
    #: Whether older snapshots were let go (the ring spans all it can).
    dropped: bool = False

    def offer(self, at: float, taken: Snapshot) -> bool:
        """
        Keep C{taken} if the newest kept one is C{every} old; returns
        whether it was kept.
        """
        if self._taken and at - self._taken[-1][0] < self.every:
            return False
        self._taken.append((at, taken))
        while len(self._taken) > self.size:
            self._taken.popleft()
            self.dropped = True
        return True

    def oldest(self) -> Optional[Tuple[float, Snapshot]]:
        return self._taken[0] if self._taken else None

    def __iter__(self) -> Iterable[Tuple[float, Snapshot]]:
        return iter(self._taken)


@define
class History:
    """
    What the counters were a minute at a time for the last hour (C{hour})
    and over the last few seconds (C{recent}): the status subtracts them
    from a snapshot taken as it answers.
    """

    hour: Ring = field(factory=lambda: Ring(60.0, 61))
    recent: Ring = field(factory=lambda: Ring(2.0, 4))

    def offer(self, at: float, taken: Snapshot) -> None:
        self.hour.offer(at, taken)
        self.recent.offer(at, taken)

    def last_hour(self, taken: Snapshot) -> Snapshot:
        """
        How much each counter grew in the last hour (since the process
        started, when that is less: every counter started at zero).
        """
        oldest = self.hour.oldest()
        return increase(taken, oldest[1] if oldest and self.hour.dropped else {})

    def rates(self, at: float, taken: Snapshot) -> Optional[Snapshot]:
        """
        Each counter's growth per second over the last few seconds; C{None}
        until a snapshot at least a second old exists.
        """
        for when, then in self.recent:
            if at - when >= 1.0:
                grown = increase(taken, then)
                return {key: value / (at - when) for key, value in grown.items()}
        return None
