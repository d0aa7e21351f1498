"""
The appliance under one fault at a time, in the fault lab: a few clients
write through the balancer across the fault, every cart is read back, and
in sync mode nothing acknowledged is lost, no read is stale or dirty and
nothing appears that was never sent (issue 8).

Each test runs its own lab (three servers, the balancer, the clients, each
on a host of its own) and holds its fault past failure detection (three
missed one-second heartbeats), so that promotion, fencing and the
balancer's reaction all happen inside the fault.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance.testing import chaos
from appliance.testing.lab import Lab

HOLD = 6.0


class PartitionTests(SynchronousTestCase):
    def across(self, step, servers=3):
        """
        Run 4 clients (one keeping its first cookie) across C{step}; assert
        the sync guarantee and that the fault hit a server of a session.
        """
        lab = Lab(self.mktemp(), servers=servers)
        self.addCleanup(lab.stop)
        lab.start()
        result = chaos.run(lab, [step], clients=4, sticky=1, rate=40.0, settle=1.0, warmup=1.5)
        report = result.report
        text = result.render(f"== {step.name}")
        self.assertEqual(result.problems, [], text)
        self.assertGreater(report.acked, 50, text)
        fault = result.faults[0]
        routes = {op.route_servers for op in result.ops if op.end < fault.start and op.ok}
        self.assertTrue(any(set(step.servers) & r for r in routes), f"no session on {step.servers}: {text}")
        self.assertEqual(
            (report.lost_count, report.stale, report.dirty, report.phantoms, report.unread), (0, 0, 0, [], []), text
        )

    def test_cut_between_two_servers(self):
        """A symmetric cut between two servers loses nothing and serves nothing stale."""
        self.across(chaos.Step("cut", ("s1", "s2"), HOLD))

    def test_one_way_cut(self):
        """A one-way cut from one server to another loses nothing and serves nothing stale."""
        self.across(chaos.Step("one-way", ("s1", "s2"), HOLD))

    def test_server_isolated_from_servers(self):
        """A server cut from the other servers while the balancer still reaches it loses nothing."""
        self.across(chaos.Step("isolate-servers", ("s1",), HOLD))

    def test_server_isolated_from_everyone(self):
        """A server cut from every other host loses nothing and serves nothing stale."""
        self.across(chaos.Step("isolate", ("s1",), HOLD))

    def test_balancer_cut_from_a_server(self):
        """The balancer cut from one server loses nothing and serves nothing stale."""
        self.across(chaos.Step("cut-balancer", ("s1",), HOLD))

    def test_pause_and_resume(self):
        """A server paused past failure detection and resumed serves nothing stale and loses nothing."""
        self.across(chaos.Step("pause", ("s1",), 8.0))

    def test_kill_and_restart(self):
        """A server killed and restarted (a new, empty incarnation) loses nothing."""
        self.across(chaos.Step("kill", ("s1",), 3.0))

    def test_two_servers_killed_a_second_apart(self):
        """Two servers killed a second apart, each restarted half a second later, lose nothing."""
        self.across(chaos.Step("kill-two", ("s1", "s2"), 0.0))

    def test_delay_between_servers(self):
        """Delay on the replication links between two servers loses nothing and serves nothing stale."""
        self.across(chaos.Step("delay", ("s1", "s2"), HOLD, seconds=0.4))

    def test_two_server_cluster_cut(self):
        """With two servers, the balancer as witness tells a cut from a death: a cut loses nothing."""
        self.across(chaos.Step("cut", ("s1", "s2"), HOLD), servers=2)
