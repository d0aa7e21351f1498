"""
A bounded chaos run in sync mode (issue 8's trial test): one fault of every
kind from the seeded schedule while eight clients write through the
balancer; nothing acknowledged is lost, no read is stale or dirty, nothing
never sent appears and every cart is read back.  bench/chaos.py runs the
same thing longer and in every mode.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance.testing import chaos


class ChaosTests(SynchronousTestCase):
    def test_sync_survives_one_fault_of_every_kind(self):
        """Nine faults, one of each kind, in sync mode: 0 lost, 0 stale, 0 dirty, 0 phantoms."""
        result = chaos.run_chaos(
            self.mktemp(), "sync", faults=len(chaos.KINDS), seed=7, hold=(3.5, 5.0),
            clients=8, sticky=2, rate=60.0, settle=1.0, warmup=1.5,
        )  # fmt: skip
        report = result.report
        text = result.render("== sync")
        self.assertEqual(result.problems, [], text)
        self.assertEqual(len(result.faults), len(chaos.KINDS), text)
        self.assertGreater(report.acked, 1000, text)
        self.assertEqual(
            (report.lost_count, report.stale, report.dirty, report.phantoms, report.unread), (0, 0, 0, [], []), text
        )
