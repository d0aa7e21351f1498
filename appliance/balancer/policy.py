"""
Routing decisions without I/O: which servers to try for a request, in which
order, and whether a failed attempt may be retried.

Everything here takes the time as an argument and returns values, so the
rules are tested with plain numbers.  The proxy only reports events
(L{Nodes.started}, L{Nodes.finished}, L{Nodes.refused}, L{Nodes.checked})
and asks for a plan (L{plan_plugin}, L{plan_sticky}).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from attrs import define, field
from zope.interface import Interface, implementer

from appliance.cookie import Route

from .framing import IDEMPOTENT

# Weight of the newest sample in the response-time average.
EWMA_WEIGHT = 0.2


@define(slots=True, eq=False)
class NodeState:
    """
    What the balancer knows about one session server.

    A server is available when the active checks last said it is up and no
    refused connection put it down less than C{down_time} ago.  A server
    the witness found C{silent} (dead, paused or cut off) is not tried at
    all, not even last: a request sent to a paused server would wait for
    the response timeout.
    """

    name: str
    outstanding: int = 0
    ewma: float = 0.0
    samples: int = 0
    down_until: float = 0.0
    up: bool = True
    passes: int = 0
    failures: int = 0
    silent: bool = False

    def available(self, now: float) -> bool:
        return self.up and now >= self.down_until


class IPolicy(Interface):
    def order(nodes: Sequence[NodeState]) -> List[NodeState]:
        """
        All of C{nodes}, the preferred one first.
        """


@implementer(IPolicy)
class RoundRobin:
    """
    Each new placement starts one server further along.
    """

    def __init__(self) -> None:
        self._next = 0

    def order(self, nodes: Sequence[NodeState]) -> List[NodeState]:
        if not nodes:
            return []
        i = self._next % len(nodes)
        self._next = i + 1
        return list(nodes[i:]) + list(nodes[:i])


@implementer(IPolicy)
class LeastRequests:
    """
    The server with the fewest requests in flight; ties go round robin so
    an idle cluster still spreads new sessions.
    """

    def __init__(self) -> None:
        self._rr = RoundRobin()

    def order(self, nodes: Sequence[NodeState]) -> List[NodeState]:
        return sorted(self._rr.order(nodes), key=_outstanding)


@implementer(IPolicy)
class Fastest:
    """
    The server with the lowest recent response time (an exponentially
    weighted moving average), scaled by its requests in flight so that a
    fast server is not buried and a server without samples gets tried.
    """

    def __init__(self) -> None:
        self._rr = RoundRobin()

    def order(self, nodes: Sequence[NodeState]) -> List[NodeState]:
        return sorted(self._rr.order(nodes), key=_expected_wait)


def _outstanding(node: NodeState) -> int:
    return node.outstanding


def _expected_wait(node: NodeState) -> float:
    return node.ewma * (node.outstanding + 1)


POLICIES = {"round_robin": RoundRobin, "least_requests": LeastRequests, "fastest": Fastest}


def make_policy(name: str) -> IPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}") from None


@define
class Nodes:
    """
    The state of every configured server, updated from events.
    """

    states: Dict[str, NodeState]
    down_time: float = 5.0
    rise: int = 2
    fall: int = 2

    @classmethod
    def of(cls, names: Iterable[str], down_time: float = 5.0, rise: int = 2, fall: int = 2) -> "Nodes":
        return cls({n: NodeState(n) for n in names}, down_time, rise, fall)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self.states)

    def __getitem__(self, name: str) -> NodeState:
        return self.states[name]

    def started(self, name: str) -> None:
        self.states[name].outstanding += 1

    def finished(self, name: str, elapsed: Optional[float]) -> None:
        """
        A request to C{name} ended; C{elapsed} is its response time, or
        C{None} when it failed.
        """
        s = self.states[name]
        if s.outstanding > 0:
            s.outstanding -= 1
        if elapsed is not None:
            if s.samples == 0:
                s.ewma = elapsed
            else:
                s.ewma += EWMA_WEIGHT * (elapsed - s.ewma)
            s.samples += 1

    def refused(self, name: str, now: float) -> None:
        """
        A connection to C{name} was refused or timed out: passively down.
        """
        self.states[name].down_until = now + self.down_time

    def checked(self, name: str, ok: bool) -> Optional[bool]:
        """
        One active health check result.  Returns the new C{up} value when it
        changed, else C{None}.
        """
        s = self.states[name]
        if ok:
            s.failures = 0
            s.passes += 1
            if not s.up and s.passes >= self.rise:
                s.up = True
                s.down_until = 0.0
                return True
        else:
            s.passes = 0
            s.failures += 1
            if s.up and s.failures >= self.fall:
                s.up = False
                return False
        return None


def _plan(preferred: Sequence[str], nodes: Nodes, policy: IPolicy, now: float) -> Tuple[str, ...]:
    """
    Preferred servers first, then the others in policy order; servers that
    are down go last, so that when every server is down each is still
    tried (fail open) rather than every request refused.
    """
    states = nodes.states
    first = [n for n in preferred if n in states and not states[n].silent]
    others = [s for s in policy.order(list(states.values())) if s.name not in first and not s.silent]
    order = [states[n] for n in first] + others
    up = [s.name for s in order if s.available(now)]
    down = [s.name for s in order if not s.available(now)]
    return tuple(up + down)


def plan_plugin(route: Route, nodes: Nodes, policy: IPolicy, now: float) -> Tuple[str, ...]:
    """
    Plugin mode: the cookie's primary, then its secondary, then any other
    server (which takes the session over); no usable cookie: by policy.
    """
    return _plan(route.candidates(), nodes, policy, now)


def plan_sticky(learned: Optional[str], nodes: Nodes, policy: IPolicy, now: float) -> Tuple[str, ...]:
    """
    Sticky mode: the server learned for this cookie value, else by policy.
    """
    return _plan((learned,) if learned else (), nodes, policy, now)


def quick_pick(preferred: Optional[str], nodes: Nodes, now: float) -> Optional[str]:
    """
    The preferred server alone when it is available: the first entry of
    the full plan, without ordering every server.  The proxy asks for the
    full plan (L{plan_plugin}, L{plan_sticky}) only when it needs a second
    server.
    """
    if preferred is None:
        return None
    state = nodes.states.get(preferred)
    if state is not None and state.up and now >= state.down_until:
        return preferred
    return None


def may_retry(method: bytes, sent: bool, replayable: bool) -> bool:
    """
    Whether a failed attempt may go to the next server.

    Before any byte of the request was sent, always.  After, only when the
    method is idempotent and the whole body is still held to resend: a POST
    that a server may have processed is never sent twice.
    """
    if not sent:
        return True
    return replayable and method in IDEMPOTENT


@define
class StickyTable:
    """
    Cookie value -> server, learned from responses, forgotten after C{ttl}
    seconds without use; at most C{max_entries}, the least recently used
    evicted first.
    """

    ttl: float
    max_entries: int = 100_000
    _entries: "OrderedDict[bytes, Tuple[str, float]]" = field(factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, value: bytes, node: str, now: float) -> None:
        entries = self._entries
        entries[value] = (node, now + self.ttl)
        entries.move_to_end(value)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def lookup(self, value: Optional[bytes], now: float) -> Optional[str]:
        if value is None:
            return None
        entry = self._entries.get(value)
        if entry is None:
            return None
        node, expires = entry
        if now >= expires:
            del self._entries[value]
            return None
        self._entries[value] = (node, now + self.ttl)
        self._entries.move_to_end(value)
        return node

    def forget(self, value: bytes) -> None:
        self._entries.pop(value, None)

    def expire(self, now: float) -> int:
        """
        Drop expired entries; returns how many.  Entries are kept in order
        of last use, so only the front needs looking at.
        """
        entries = self._entries
        dropped = 0
        while entries:
            value, (_, expires) = next(iter(entries.items()))
            if expires > now:
                break
            del entries[value]
            dropped += 1
        return dropped
