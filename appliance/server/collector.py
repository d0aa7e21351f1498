"""
Keeping CPython's cycle collector from stalling a server that holds many
sessions.

Each session copy is one object the collector tracks (its values, JSON
bytes in a dict, are not tracked).  A full (generation 2) collection visits
every tracked object: about 130 ms per 200,000 sessions measured here, so
430 ms or more for a node holding 650,000 copies, every time a quarter as
many new objects as it holds have survived (a re-protection brings them by
the hundred thousand) - and every live request waits for it.

Sessions are never part of a reference cycle, so the collector has nothing
to find among them.  L{Collector} moves the survivors of a full collection
that took longer than L{FREEZE_AFTER} out of its way (C{gc.freeze}): the
next full collections visit only what is newer, and a frozen session that
ends is still freed at once by its reference count.  What a freeze can hold
back is an object that was alive when frozen and later becomes garbage
inside a cycle; so that such leftovers do not accumulate, every
L{THAW_EVERY} seconds, at a moment when no mass re-protection or promotion
runs, everything is thawed and collected once (one full pause of the
old kind, chosen instead of suffered) and frozen again.

PyPy's collector is incremental and has no C{gc.freeze}: there this does
nothing.
"""

from __future__ import annotations

import gc as _gc
import time
from typing import Callable, Optional

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

log = Logger()

#: A full collection at least this long (seconds) freezes its survivors.
FREEZE_AFTER = 0.01
#: How often (seconds) everything is thawed and collected once.
THAW_EVERY = 3600.0
#: How long to wait (seconds) for a quiet moment before asking again.
QUIET_RETRY = 10.0


class Collector(service.Service):
    """
    The freeze policy of one session server's process (see the module
    docstring); one per process, as the collector is.

    C{node} names the server (for its metrics); C{gc} is the C{gc} module
    (a stand-in in tests); C{busy()} says whether a mass job runs now;
    C{timer} reads a monotonic clock for the length of a collection.
    """

    def __init__(self, node: str, clock, busy: Callable[[], bool], gc=_gc, timer: Callable[[], float] = time.perf_counter):
        self.node = node
        self.clock = clock
        self.busy = busy
        self.gc = gc
        self.timer = timer
        self.active = hasattr(gc, "freeze") and hasattr(gc, "callbacks")
        self._started: Optional[float] = None
        self._thaw: Optional[task.LoopingCall] = None
        self._retry = None
        #: Survivors frozen after a long collection, and thaws done.
        self.freezes = 0
        self.thaws = 0
        #: The longest full collection seen (seconds).
        self.longest = 0.0

    def startService(self) -> None:
        super().startService()
        if not self.active:
            return
        self.gc.callbacks.append(self._collected)
        # What the process built to start (modules, configuration, the
        # services) lives as long as it does: frozen if it is worth it.
        self.gc.collect()
        self._thaw = task.LoopingCall(self.thaw)
        self._thaw.clock = self.clock
        self._thaw.start(THAW_EVERY, now=False)

    def stopService(self) -> None:
        super().stopService()
        if not self.active:
            return
        if self._collected in self.gc.callbacks:
            self.gc.callbacks.remove(self._collected)
        if self._thaw is not None and self._thaw.running:
            self._thaw.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.gc.unfreeze()

    def _collected(self, phase: str, info: dict) -> None:
        # Called by the interpreter around every collection, in whatever
        # thread triggered it: no reactor calls here.
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = self.timer()
            return
        if self._started is None:
            return
        took = self.timer() - self._started
        self._started = None
        self.longest = max(self.longest, took)
        if took >= FREEZE_AFTER:
            self.gc.freeze()
            self.freezes += 1

    def thaw(self) -> None:
        """
        Collect everything once, frozen objects included (the survivors are
        frozen again as after any long collection) - unless a mass job runs: then as soon as none does.
        """
        self._retry = None
        if self.busy():
            self._retry = self.clock.callLater(QUIET_RETRY, self.thaw)
            return
        began = self.timer()
        self.gc.unfreeze()
        found = self.gc.collect()  # frozen again by _collected if it was long
        self.thaws += 1
        log.info(
            "full collection of every object: {found} unreachable, {ms:.0f} ms",
            found=found, ms=(self.timer() - began) * 1000,
        )
