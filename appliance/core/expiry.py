"""
An expiry wheel: session ids filed by the second in which their idle
timeout may run out, so that a sweep looks only at the sessions due instead
of every session the node holds.

Entries are hints.  A session is filed when its record is made; a touch does
not move it (that would cost every request), so when its slot comes round
the store looks at the session itself and files it again if it was used
since.  Each session is thus looked at about once per timeout, however busy
it is.  Nothing here reads a clock: times are passed in.
"""

from __future__ import annotations

import heapq
import math
from typing import Dict, List, Optional, Tuple


class ExpiryWheel:
    def __init__(self, granularity: float = 1.0):
        self.granularity = granularity
        self._slots: Dict[int, List[str]] = {}
        self._heap: List[int] = []

    def __len__(self) -> int:
        return sum(len(sids) for sids in self._slots.values())

    def slot(self, at: float) -> int:
        """
        The slot of a session expiring at C{at}: the first multiple of
        C{granularity} not before C{at}, when it comes due (at most one
        C{granularity} late, never early).  Slots are numbered from 1.
        """
        return max(1, int(math.ceil(at / self.granularity)))

    def add(self, sid: str, slot: int) -> None:
        sids = self._slots.get(slot)
        if sids is None:
            sids = self._slots[slot] = []
            heapq.heappush(self._heap, slot)
        sids.append(sid)

    def due(self, now: float) -> bool:
        """
        Whether a slot is due at C{now}.
        """
        return bool(self._heap) and self._heap[0] * self.granularity <= now

    def pop(self, now: float, limit: int) -> Optional[Tuple[int, List[str]]]:
        """
        Up to C{limit} session ids of the earliest slot that is due at
        C{now}, with that slot's number; C{None} when no slot is due.  What
        is left of a slot stays for the next call.
        """
        if not self.due(now):
            return None
        heap = self._heap
        slot = heap[0]
        sids = self._slots[slot]
        if len(sids) <= limit:
            heapq.heappop(heap)
            del self._slots[slot]
            return slot, sids
        taken = sids[-limit:]
        del sids[-limit:]
        return slot, taken
