"""
Per-session locks: first come first served, bounded waits, clean-up.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appliance.server.locks import Busy, SessionLocks


class LockTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.locks = SessionLocks(self.clock, wait=5.0)

    def test_first_come_first_served(self):
        """Waiters get the lock in the order they asked, one at a time."""
        self.assertTrue(self.locks.try_take("a"))
        self.assertFalse(self.locks.try_take("a"))
        order = []
        for n in range(3):
            self.locks.take("a").addCallback(lambda _, n=n: order.append(n))
        self.locks.release("a")
        self.assertEqual(order, [0])
        self.locks.release("a")
        self.locks.release("a")
        self.assertEqual(order, [0, 1, 2])
        self.locks.release("a")
        self.assertNotIn("a", self.locks)

    def test_wait_is_bounded(self):
        """A waiter gives up with Busy after the bound and its place goes; the next waiter is not skipped."""
        self.locks.try_take("a")
        first = self.locks.take("a")
        self.clock.advance(3)
        second = self.locks.take("a")
        self.clock.advance(2)
        self.failureResultOf(first).trap(Busy)
        self.locks.release("a")
        self.successResultOf(second)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_sessions_independent(self):
        """A held session does not delay another."""
        self.locks.try_take("a")
        self.successResultOf(self.locks.take("b"))

    def test_fail_all(self):
        """A new incarnation answers every waiter with the given error and frees every lock."""
        self.locks.try_take("a")
        waiter = self.locks.take("a")
        self.assertEqual(self.locks.fail_all(Busy("restart")), 1)
        self.failureResultOf(waiter).trap(Busy)
        self.assertEqual(len(self.locks), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.locks.release("a")
        self.assertTrue(self.locks.try_take("a"))
