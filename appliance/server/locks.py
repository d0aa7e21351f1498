"""
Per-session locks: requests, hand-overs and background re-protection of one
session take turns on its primary, first come first served, and nobody waits
without bound.

A lock is held from the moment a request opens its session until its change
is committed *and* acknowledged by the secondary (in sync mode), so no other
request ever reads a write that might still be refused (no dirty reads).
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Tuple

from twisted.internet import defer


class Busy(Exception):
    """
    The session stayed locked longer than a request may wait for it.
    """


class SessionLocks:
    def __init__(self, clock, wait: float):
        self.clock = clock
        self.wait = wait
        self._held: Dict[str, Deque[Tuple[defer.Deferred, object]]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, sid: str) -> bool:
        return sid in self._held

    def try_take(self, sid: str) -> bool:
        """
        Take the lock if it is free, without a Deferred (the hot path).
        """
        if sid in self._held:
            return False
        self._held[sid] = deque()
        return True

    def take(self, sid: str) -> defer.Deferred:
        """
        Fires once the lock is ours; fails with L{Busy} after C{wait}
        seconds in the queue (and the place is given up).
        """
        waiters = self._held.get(sid)
        if waiters is None:
            self._held[sid] = deque()
            return defer.succeed(None)
        d = defer.Deferred()
        timer = self.clock.callLater(self.wait, self._gave_up, sid, d)
        waiters.append((d, timer))
        return d

    def _gave_up(self, sid: str, d: defer.Deferred) -> None:
        waiters = self._held.get(sid)
        if waiters is not None:
            for entry in waiters:
                if entry[0] is d:
                    waiters.remove(entry)
                    break
        d.errback(Busy(sid))

    def release(self, sid: str) -> None:
        """
        Hand the lock to the next waiter, or free it.
        """
        waiters = self._held.get(sid)
        if waiters is None:
            return
        if waiters:
            d, timer = waiters.popleft()
            if timer.active():
                timer.cancel()
            d.callback(None)
        else:
            del self._held[sid]

    def fail_all(self, error: Exception) -> int:
        """
        Every waiter fails with C{error} and every lock is freed (the node
        starts a new incarnation); returns how many waiters there were.
        """
        held, self._held = self._held, {}
        n = 0
        for waiters in held.values():
            for d, timer in waiters:
                if timer.active():
                    timer.cancel()
                d.errback(error)
                n += 1
        return n
