"""
The sessions of a node: how many, the largest by size, one session's
metadata by id (never its data), and ending one on both copies through the
node's ordinary invalidation (its secondary drops it as on a logout).

The largest are found by a walk over the sessions in slices of
L{SLICE}, one slice per reactor turn, at most every L{STALE} seconds and
only while someone asks: a million sessions are never walked in one go.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterator, List, Optional, Tuple

from twisted.internet import defer

from appliance import cookie
from appliance.core.store import Store

#: Sessions looked at per reactor turn while finding the largest.
SLICE = 5_000
#: How old the list of the largest may be before a request starts a new walk.
STALE = 10.0
#: How many of the largest are listed.
LARGEST = 10


def largest(store: Store, sids: Iterator[str], n: int, found: List[Tuple[int, str, int]], count: int) -> bool:
    """
    Look at up to C{count} more of C{sids} (those still in C{store}),
    keeping the C{n} largest in heap C{found} as (size, sid, version);
    returns whether C{sids} is exhausted.
    """
    for _ in range(count):
        sid = next(sids, None)
        if sid is None:
            return True
        session = store.get(sid)
        if session is None:
            continue
        entry = (session.size, sid, session.version)
        if len(found) < n:
            heapq.heappush(found, entry)
        elif entry > found[0]:
            heapq.heapreplace(found, entry)
    return False


class Largest:
    """
    The last finished list of the largest sessions of C{store} and when it
    was finished (C{now}: the clock of that time), a new walk started on
    demand when it is older than L{STALE}.
    """

    def __init__(self, clock, store: Store, now: Callable[[], float]):
        self.clock = clock
        self.store = store
        self.now = now
        self.found: Optional[List[dict]] = None
        self.at: Optional[float] = None
        self.walking = False

    def asked(self) -> None:
        if self.walking or (self.at is not None and self.now() - self.at < STALE):
            return
        self.walking = True
        heap: List[Tuple[int, str, int]] = []
        # A copy of the keys (a few milliseconds for a million): the store
        # changes between slices.
        sids = iter(list(self.store.sessions))

        def step() -> None:
            if largest(self.store, sids, LARGEST, heap, SLICE):
                self.found = [{"sid": sid, "size": size, "version": version}
                              for size, sid, version in sorted(heap, reverse=True)]
                self.at = self.now()
                self.walking = False
            else:
                self.clock.callLater(0, step)

        step()

    def age(self) -> Optional[float]:
        return None if self.at is None else round(self.now() - self.at, 1)


def metadata(server, sid: str) -> Optional[dict]:
    """
    What the node knows of session C{sid} but its data, or C{None}.
    """
    store = server.node.store
    session = store.get(sid)
    if session is None:
        return None
    now = server.now()
    return {
        "sid": sid,
        "node": server.name,
        "role": "primary" if store.mine(session) else "backup",
        "version": session.version,
        "epoch": session.epoch,
        "primary": session.primary,
        "secondary": session.secondary,
        "size": session.size,
        "idle_seconds": round(max(0.0, now - session.last_access), 3),
        "expires_in_seconds": round(session.expires_at() - now, 3),
        "timeout_seconds": session.timeout,
    }


def sessions_document(server, largest_of: Largest) -> dict:
    largest_of.asked()
    return {
        "node": server.name,
        "count": len(server.node.store),
        "primaries": server.node.store.primaries,
        "largest": largest_of.found,
        "largest_age": largest_of.age(),
    }


@defer.inlineCallbacks
def end_session(server, sid: str):
    """
    End C{sid} as a logout would: the node takes the session (over, when
    it holds only the backup or none), invalidates it and replicates the
    removal.  Fires with whether there was such a session; fails with
    L{appliance.server.errors.NotServing} when the node may not serve it
    now.
    """
    handle = yield server.node.open(cookie.Route(sid, None, None))
    if handle.session is None:
        server.node.abandon(handle)
        return False
    handle.data.invalidate()
    yield server.node.close(handle)
    return True

