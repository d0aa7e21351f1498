"""
Join and rebalance: which of this node's sessions move where, so that a
node that joins (new, or restarted empty) gets its fair share of backups
and primaries, a bounded number at a time.

Every node decides for its own primaries only: where their backups live
(it is their primary that picks a secondary) and which of them it hands to
another node.  Each node sees the same counts (every eligible node's
primaries and backups), so each computes the same targets, the mean over
the eligible nodes, and moves its own share of every node's surplus:
together the moves fill each deficit about once, and the next round, with
fresh counts, corrects what is left.

Placement follows the placement rule (L{place_secondary}): among the nodes
a pin allows, a backup goes to the furthest away in the topology, then the
least loaded; a backup on a nearer node than the furthest eligible moves
first.  No I/O here: the caller passes the counts and the sessions, and the
time to L{Pacer}.
"""

from __future__ import annotations

import collections
import heapq
import math
from typing import Callable, Deque, Dict, Iterable, List, Mapping, Optional, Tuple

from attrs import field, frozen

from appliance.core.store import topology_distance

BACKUP = "backup"
PRIMARY = "primary"

#: Imbalance left alone: a node within this fraction of the target (or
#: within one session) is even enough; moving less than that only churns.
SLACK = 0.02


@frozen
class Counts:
    """
    How many primaries and backups one node holds.
    """

    primaries: int = field()
    backups: int = field()

    @primaries.validator
    @backups.validator
    def _natural(self, attribute, value):
        if type(value) is not int or value < 0:
            raise ValueError(f"{attribute.name} must be a whole number, not {value!r}")


@frozen
class Move:
    """
    One session to move: C{kind} L{BACKUP} (its backup goes from
    C{source}, its secondary now, to C{to}) or L{PRIMARY} (C{to}, its
    secondary, becomes its primary; C{source} is C{to}).
    """

    kind: str
    sid: str
    to: str
    source: Optional[str]


def _slack(target: float) -> float:
    return max(1.0, target * SLACK)


def _split(amount: float, shares: Mapping[str, float], up: bool = False) -> Dict[str, int]:
    """
    C{amount} in whole sessions (rounded down, or C{up}) over C{shares},
    in proportion (largest share first for the remainders, then by name).
    Rounded up where several nodes each move their part of one surplus:
    parts rounded down would leave a surplus of a few sessions for good.
    """
    total = sum(shares.values())
    whole = math.ceil(amount - 1e-9) if up else int(amount + 1e-9)
    if total <= 0 or whole < 1:
        return {}
    raw = {name: whole * share / total for name, share in shares.items()}
    out = {name: int(v) for name, v in raw.items()}
    left = whole - sum(out.values())
    for name in sorted(raw, key=lambda n: (-(raw[n] - out[n]), n))[: max(left, 0)]:
        out[name] += 1
    return {name: n for name, n in out.items() if n > 0}


def candidates(me, nodes: Mapping[str, object], pinned: Tuple[str, ...] = ()) -> List[str]:
    """
    The eligible nodes that may back this node's sessions: those a pin
    allows (pins win), and of those the furthest away in the topology.
    C{nodes} maps names to node configs (with C{machine}, C{rack},
    C{site}).
    """
    allowed = [n for n in nodes if n != me.name and (not pinned or n in pinned)]
    if not allowed:
        return []
    far = max(topology_distance(me, nodes[n]) for n in allowed)
    return sorted(n for n in allowed if topology_distance(me, nodes[n]) == far)


def backup_quotas(
    me, nodes: Mapping[str, object], counts: Mapping[str, Counts], mine: Mapping[str, int], pinned: Tuple[str, ...] = ()
) -> Dict[Tuple[str, str], int]:
    """
    How many backups of this node's primaries to move from one node to
    another: C{{(source, to): n}}.  C{nodes} and C{counts} cover the
    eligible nodes (this one included); C{mine} is how many of this node's
    primaries each node backs.
    """
    allowed = candidates(me, nodes, pinned)
    if not allowed:
        return {}
    target = sum(counts[n].backups for n in nodes) / len(nodes)
    slack = _slack(target)
    deficits = {n: target - counts[n].backups for n in allowed if target - counts[n].backups > 0}
    quotas: Dict[Tuple[str, str], int] = {}
    for source in sorted(mine):
        held = mine[source]
        if held <= 0 or source == me.name or source not in nodes:
            # Backups on a node that is gone or leaving are re-protection's.
            continue
        if source not in allowed:
            # Nearer than it should be (or not pinned): all of them move,
            # to the least loaded first.
            for to, n in _split(held, deficits or {n: 1.0 for n in allowed}).items():
                quotas[(source, to)] = quotas.get((source, to), 0) + n
            continue
        surplus = counts[source].backups - target
        if surplus <= slack:
            continue
        # This node's part of the source's surplus: as much as its share
        # of what the source holds.
        share = surplus * held / max(counts[source].backups, 1)
        # A move must leave the two nearer each other, or rounds of them
        # swing back and forth.
        room = {
            n: d for n, d in deficits.items()
            if n != source and d > slack / 2 and counts[source].backups - counts[n].backups >= 2
        }
        if not room:
            # No node under the mean can take them from here (the one
            # that lacks backups is this node itself): pass the surplus to
            # a node well below the source, whose own primaries pass it on
            # to the node that lacks them.
            gaps = {n: counts[source].backups - counts[n].backups for n in allowed if n != source}
            room = {n: gap for n, gap in gaps.items() if gap > 2 * slack}
            share = min([share] + [gap / 2 for gap in room.values()])
        for to, n in _split(min(share, held), room, up=True).items():
            quotas[(source, to)] = quotas.get((source, to), 0) + n
    return quotas


def primary_quotas(me, nodes: Mapping[str, object], counts: Mapping[str, Counts]) -> Dict[str, int]:
    """
    How many of this node's primaries to hand to each other node: its
    surplus over the mean, spread over the nodes under it in proportion
    to what each lacks.
    """
    target = sum(counts[n].primaries for n in nodes) / len(nodes)
    surplus = counts[me.name].primaries - target
    slack = _slack(target)
    if surplus <= slack:
        return {}
    ours = counts[me.name].primaries
    deficits = {
        n: target - counts[n].primaries
        for n in nodes
        if n != me.name and target - counts[n].primaries > slack / 2 and ours - counts[n].primaries >= 2
    }
    return _split(surplus, deficits)


def _first(n: int, sids: Iterable[str]) -> List[str]:
    """
    The C{n} smallest sids: the same ones whatever order they come in.
    """
    return heapq.nsmallest(n, sids) if n > 0 else []


def plan(
    me,
    nodes: Mapping[str, object],
    counts: Mapping[str, Counts],
    mine: Mapping[str, int],
    sessions: Callable[[str], Iterable[str]],
    budget: int,
    pinned: Tuple[str, ...] = (),
) -> List[Move]:
    """
    The moves this node makes now, at most C{budget}: backups first (a
    joiner holds copies soonest), then primaries.  C{nodes} and C{counts}
    cover the eligible nodes, this one included; C{mine} says how many of
    this node's primaries each node backs and C{sessions(node)} gives
    their sids (asked only for the nodes something moves from).  A
    session without a secondary is re-protection's, not rebalance's.

    A primary moves only to the node that backs it: the two swap roles
    (epoch + 1; the old primary keeps its copy as the backup), so nothing
    is copied, and the session's cookie, which names the old primary and
    this secondary, still leads a balancer to it (the old primary answers
    "not served", the balancer falls back to the secondary, and that
    answer carries the new cookie).
    """
    if me.name not in nodes or len(nodes) < 2 or budget <= 0:
        return []
    moves: List[Move] = []
    taken = set()
    listed: Dict[str, List[str]] = {}

    def sids(source: str) -> List[str]:
        if source not in listed:
            listed[source] = list(sessions(source))
        return listed[source]

    for (source, to), n in sorted(backup_quotas(me, nodes, counts, mine, pinned).items()):
        n = min(n, budget - len(moves))
        if n <= 0:
            continue
        for sid in _first(n, (s for s in sids(source) if s not in taken)):
            taken.add(sid)
            moves.append(Move(BACKUP, sid, to, source))
    for to, n in sorted(primary_quotas(me, nodes, counts).items()):
        n = min(n, budget - len(moves), mine.get(to, 0))
        if n <= 0:
            continue
        for sid in _first(n, (s for s in sids(to) if s not in taken)):
            taken.add(sid)
            moves.append(Move(PRIMARY, sid, to, to))
    return moves


class Pacer:
    """
    A token bucket: C{rate} sessions a second, at most C{burst} at once.
    The time is passed in.
    """

    def __init__(self, rate: float, burst: float, now: float):
        if rate <= 0 or burst < 1:
            raise ValueError("a pacer needs a positive rate and a burst of at least one")
        self.rate = rate
        self.burst = burst
        self.tokens = 0.0
        self.at = now

    def available(self, now: float) -> int:
        """
        How many sessions may move now.
        """
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens = max(0.0, self.tokens - n)


class Moved:
    """
    The sessions this node handed to another lately, each for C{keep}
    seconds: a request for one of them that still reaches this node (its
    cookie names this node) is answered "not served", so that the balancer
    takes it to the session's secondary, its new primary, instead of this
    node taking the session back.  The time is passed in.
    """

    def __init__(self, keep: float):
        self.keep = keep
        self._until: Dict[str, float] = {}
        self._order: Deque[Tuple[float, str]] = collections.deque()

    def __len__(self) -> int:
        return len(self._until)

    def add(self, sid: str, now: float) -> None:
        until = now + self.keep
        self._until[sid] = until
        self._order.append((until, sid))
        self._prune(now)

    def recent(self, sid: str, now: float) -> bool:
        self._prune(now)
        return sid in self._until

    def _prune(self, now: float) -> None:
        order, until = self._order, self._until
        while order and order[0][0] <= now:
            at, sid = order.popleft()
            if until.get(sid) == at:
                del until[sid]
