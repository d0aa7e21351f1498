"""
The cycle collector's freeze policy of a session server's process.
"""

from __future__ import annotations

import gc
import platform

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appliance.server import collector
from appliance.server.collector import Collector


class FakeGC:
    """
    The part of the C{gc} module the collector uses; C{collect()} runs the
    callbacks around a full collection that takes C{took} seconds on
    C{timer}.
    """

    def __init__(self, timer):
        self.timer = timer
        self.callbacks = []
        self.frozen = 0
        self.live = 0
        self.calls = []
        self.took = 0.0

    def get_freeze_count(self):
        return self.frozen

    def freeze(self):
        self.calls.append("freeze")
        self.frozen, self.live = self.frozen + self.live, 0

    def unfreeze(self):
        self.calls.append("unfreeze")
        self.frozen, self.live = 0, self.live + self.frozen

    def collect(self, generation=2):
        self.calls.append("collect")
        self.full(self.took, generation)
        return 3

    def full(self, took, generation=2):
        for callback in list(self.callbacks):
            callback("start", {"generation": generation})
        self.timer.now += took
        for callback in list(self.callbacks):
            callback("stop", {"generation": generation, "collected": 0})


class Timer:
    now = 0.0

    def __call__(self):
        return self.now


class CollectorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.timer = Timer()
        self.gc = FakeGC(self.timer)
        self.jobs = False
        self.collector = Collector("s1", self.clock, lambda: self.jobs, gc=self.gc, timer=self.timer)

    def test_long_full_collection_freezes_its_survivors(self):
        """A full collection as long as FREEZE_AFTER freezes what survived it; a shorter one, or a younger generation, does not."""
        self.collector.startService()
        self.gc.calls.clear()
        self.gc.live = 100
        self.gc.full(collector.FREEZE_AFTER / 2)
        self.gc.full(1.0, generation=1)
        self.assertEqual((self.gc.calls, self.gc.frozen), ([], 0))
        self.gc.full(collector.FREEZE_AFTER)
        self.assertEqual((self.gc.calls, self.gc.frozen, self.gc.live), (["freeze"], 100, 0))
        self.assertEqual(self.collector.freezes, 1)
        self.assertAlmostEqual(self.collector.longest, collector.FREEZE_AFTER)

    def test_start_collects_and_freezes_when_long(self):
        """Starting collects once: what the process built to start is frozen when that collection was long."""
        self.gc.took = 0.05
        self.gc.live = 40
        self.collector.startService()
        self.assertEqual(self.gc.calls, ["collect", "freeze"])
        self.assertEqual(self.gc.frozen, 40)

    def test_thaw_collects_everything_when_quiet(self):
        """Every THAW_EVERY seconds everything is thawed and collected once, then frozen again if that was long."""
        self.collector.startService()
        self.gc.frozen, self.gc.calls = 500, []
        self.clock.advance(collector.THAW_EVERY - 1)
        self.assertEqual(self.gc.calls, [])
        self.gc.took = 0.2
        self.clock.advance(1)
        self.assertEqual(self.gc.calls, ["unfreeze", "collect", "freeze"])
        self.assertEqual((self.collector.thaws, self.gc.frozen), (1, 500))

    def test_thaw_waits_for_mass_jobs(self):
        """While a mass re-protection or promotion runs, the thaw waits; it runs once none does, then keeps its period."""
        self.collector.startService()
        self.gc.calls.clear()
        self.jobs = True
        self.clock.advance(collector.THAW_EVERY)
        self.clock.advance(collector.QUIET_RETRY * 3)
        self.assertEqual(self.gc.calls, [])
        self.jobs = False
        self.clock.advance(collector.QUIET_RETRY)
        self.assertEqual(self.gc.calls, ["unfreeze", "collect"])
        self.assertEqual(self.collector.thaws, 1)
        self.clock.advance(collector.THAW_EVERY - collector.QUIET_RETRY * 4)
        self.assertEqual(self.collector.thaws, 2)

    def test_stop_unfreezes_and_unhooks(self):
        """Stopping thaws everything, removes the callback and cancels the timers."""
        self.collector.startService()
        self.jobs = True
        self.clock.advance(collector.THAW_EVERY)
        self.gc.frozen = 7
        self.collector.stopService()
        self.assertEqual((self.gc.callbacks, self.gc.frozen, self.gc.live), ([], 0, 7))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_metrics(self):
        """A session server's admin metrics report the frozen objects, the freezes, the thaws and the longest full collection."""
        from prometheus_client import generate_latest

        from appliance.metrics import registry_for

        from .test_metrics import samples

        self.collector.startService()
        self.gc.live = 100
        self.gc.full(0.25)
        self.gc.took = 0.1
        self.clock.advance(collector.THAW_EVERY)
        got = samples(generate_latest(registry_for([self.collector])).decode())
        node = (("node", "s1"),)
        self.assertEqual(got[("appliance_gc_frozen_objects", node)], 100)
        self.assertEqual(got[("appliance_gc_freezes_total", node)], 2)
        self.assertEqual(got[("appliance_gc_thaws_total", node)], 1)
        self.assertAlmostEqual(got[("appliance_gc_longest_full_seconds", node)], 0.25)

    def test_inert_without_freeze(self):
        """An interpreter whose gc has no freeze (PyPy) gets no policy at all."""

        class NoFreeze:
            callbacks: list = []

            def collect(self):
                raise AssertionError("not called")

        c = Collector("s1", self.clock, lambda: False, gc=NoFreeze())
        c.startService()
        c.stopService()
        self.assertEqual((NoFreeze.callbacks, self.clock.getDelayedCalls()), ([], []))


class RealCollectorTests(SynchronousTestCase):
    """
    With this interpreter's own collector.
    """

    def test_frozen_objects_leave_full_collections(self):
        """Objects that survived a long full collection are frozen, later collections skip them, and stop thaws them."""
        if platform.python_implementation() == "PyPy":
            self.assertFalse(Collector("s1", Clock(), lambda: False).active, "PyPy's gc has no freeze")
            return
        self.patch(collector, "FREEZE_AFTER", 0.0)
        c = Collector("s1", Clock(), lambda: False)
        kept = [[i] for i in range(20_000)]
        c.startService()
        self.addCleanup(gc.unfreeze)
        try:
            self.assertGreaterEqual(gc.get_freeze_count(), len(kept))
            self.assertGreaterEqual(c.freezes, 1)
            gc.collect()
            self.assertEqual(len([o for o in gc.get_objects(2) if o is kept[0]]), 0)
        finally:
            c.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertNotIn(c._collected, gc.callbacks)
