"""
The rule of who may serve (L{appliance.core.membership}), pure, with times
passed in: voters' promises, leases from a majority, verdicts, incarnations,
and a property that no history of renewals, delays, votes and clock drift
lets a server hold its lease while a majority holds it dead.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appliance.core.membership import Lease, Membership, Renewal, Timing, Voter, majority

T = Timing(lease=1.5, drift=0.01)


class VoterTests(SynchronousTestCase):
    def test_grant_binds_for_a_lease(self):
        """A voter that granted a lease votes no until a whole lease has passed since, then yes for good."""
        v = Voter(1.5, started=-10.0)
        self.assertIs(v.renew("s1", 5, 0.0), Renewal.GRANTED)
        self.assertFalse(v.vote("s1", 5, 1.49))
        self.assertTrue(v.vote("s1", 5, 1.5))
        self.assertIs(v.renew("s1", 5, 1.6), Renewal.DEAD)
        self.assertTrue(v.vote("s1", 5, 1.7))

    def test_restarted_voter_grants_nothing_at_first(self):
        """A voter that just started grants nothing for a round's time: its votes before the restart may be in an asker's round."""
        v = Voter(1.5, started=100.0)
        self.assertIs(v.renew("s1", 5, 100.74), Renewal.NOT_YET)
        self.assertIs(v.renew("s1", 5, 100.75), Renewal.GRANTED)

    def test_unknown_incarnation(self):
        """An incarnation never granted anything gets a yes once the voter's own start is a lease old, and is then refused."""
        v = Voter(1.5, started=0.0)
        self.assertFalse(v.vote("s2", 3, 1.0))
        self.assertTrue(v.vote("s2", 3, 2.0))
        self.assertIs(v.renew("s2", 3, 2.1), Renewal.DEAD)

    def test_restarted_voter_votes_nobody_dead_at_first(self):
        """A voter that just started may have made promises before it restarted: no yes (but on proof) for a lease after its start."""
        v = Voter(1.5, started=100.0)
        self.assertIs(v.renew("s1", 5, 100.75), Renewal.GRANTED)
        self.assertFalse(v.vote("s1", 5, 101.45))
        self.assertTrue(v.vote("s1", 5, 102.3))

    def test_votes_bind_for_good(self):
        """A voter that voted an incarnation dead never grants it again."""
        v = Voter(1.5, started=-10.0)
        v.renew("s1", 5, 0.0)
        self.assertTrue(v.vote("s1", 5, 2.0))
        self.assertIs(v.renew("s1", 5, 100.0), Renewal.DEAD)

    def test_newer_incarnation_supersedes(self):
        """A newer incarnation proves the older one dead; the older one's renewals are refused as stale."""
        v = Voter(1.5, started=-10.0)
        v.renew("s1", 5, 0.0)
        self.assertEqual(v.seen("s1", 6), 5)
        self.assertTrue(v.vote("s1", 5, 0.1))
        self.assertIs(v.renew("s1", 5, 0.2), Renewal.DEAD)
        self.assertIs(v.renew("s1", 4, 0.2), Renewal.DEAD)
        self.assertIs(v.renew("s1", 6, 0.2), Renewal.GRANTED)
        self.assertFalse(v.vote("s1", 6, 0.3))
        v.seen("s1", 8)
        self.assertIs(v.renew("s1", 7, 0.2), Renewal.STALE)

    def test_proof_votes_at_once(self):
        """A refused connection is proof: the voter votes yes although its promise still ran."""
        v = Voter(1.5, started=-10.0)
        v.renew("s1", 5, 0.0)
        v.proof("s1", 5)
        self.assertTrue(v.vote("s1", 5, 0.1))
        self.assertIs(v.renew("s1", 7, 0.2), Renewal.GRANTED)

    def test_silent(self):
        """A server silent for a whole lease is reported silent."""
        v = Voter(1.5, started=0.0)
        self.assertTrue(v.silent("s1", 0.0))
        v.renew("s1", 5, 1.0)
        self.assertFalse(v.silent("s1", 2.4))
        self.assertTrue(v.silent("s1", 2.5))


class LeaseTests(SynchronousTestCase):
    def test_majority_of_grants(self):
        """The lease holds while a majority of voters' grants (this server's own included) hold."""
        lease = Lease("s1", ("s1", "s2", "s3", "lb1"), T)
        self.assertEqual(majority(lease.voters), 3)
        self.assertFalse(lease.valid(0.0))
        lease.granted("s2", 0.0)
        self.assertFalse(lease.valid(0.0))
        lease.granted("lb1", 1.0)
        self.assertTrue(lease.valid(1.0))
        self.assertTrue(lease.valid(T.held_for - 0.001))
        self.assertFalse(lease.valid(T.held_for))
        lease.granted("s3", 1.2)
        self.assertTrue(lease.valid(1.0 + T.held_for - 0.001))

    def test_counted_from_asking_and_shorter_than_the_promise(self):
        """A grant counts from when it was asked, for less than the voter's promise (drift margin)."""
        self.assertLess(T.held_for, T.lease)
        self.assertAlmostEqual(T.held_for, 1.5 * 0.99 / 1.01)

    def test_old_grant_never_shortens(self):
        """A late answer to an older renewal does not shorten a newer grant."""
        lease = Lease("s1", ("s1", "s2", "s3"), T)
        lease.granted("s2", 5.0)
        lease.granted("s2", 4.0)
        self.assertEqual(lease.expires, 5.0 + T.held_for)

    def test_should_end_only_after_holding(self):
        """A server that held its lease and lost it ends its incarnation; one that never held it waits."""
        lease = Lease("s1", ("s1", "s2", "s3"), T)
        self.assertFalse(lease.should_end(100.0))
        lease.granted("s2", 0.0)
        self.assertFalse(lease.should_end(T.held_for - 0.01))
        self.assertTrue(lease.should_end(T.held_for))

    def test_lapsed_lease_never_comes_back(self):
        """Once lapsed, a lease is not renewed again in that incarnation: voters that voted it dead may have restarted and forgotten."""
        lease = Lease("s1", ("s1", "s2", "s3"), T)
        lease.granted("s2", 0.0)
        lease.granted("s3", T.held_for + 0.5)
        self.assertFalse(lease.valid(T.held_for + 1.0))
        self.assertTrue(lease.should_end(T.held_for))

    def test_forgetful_voters_cannot_revive(self):
        """A majority votes a server dead, two of those voters restart and grant again: the server still holds no lease."""
        voters = {v: Voter(T.lease, -10.0) for v in ("s1", "s2", "s3", "lb1", "lb2")}
        lease = Lease("s1", tuple(voters), T)
        for v in ("s2", "s3", "lb1", "lb2"):
            voters[v].renew("s1", 1, 0.0)
            lease.granted(v, 0.0)
        self.assertTrue(lease.valid(1.0))
        dead = [v for v in ("s2", "s3", "lb1") if voters[v].vote("s1", 1, 2.0)]
        self.assertEqual(len(dead), 3)
        voters["s2"] = Voter(T.lease, 2.5)
        voters["lb1"] = Voter(T.lease, 2.5)
        for v in ("s2", "lb1", "lb2"):
            if voters[v].renew("s1", 1, 3.0) is Renewal.GRANTED:
                lease.granted(v, 3.0)
        self.assertFalse(lease.valid(3.1))

    def test_restarted_voters_never_revive_a_never_held_incarnation(self):
        """An incarnation voted dead before it ever held its lease stays without one when the voters that voted restart."""
        voters = {v: Voter(T.lease, -10.0) for v in ("s1", "s2", "s3", "lb1", "lb2")}
        lease = Lease("s3", tuple(voters), T)
        self.assertEqual(sum(voters[v].vote("s3", 1, 0.0) for v in ("s1", "s2", "lb1")), 3)
        voters["s1"] = Voter(T.lease, 0.1, born=2)
        voters["lb1"] = Voter(T.lease, 0.1, born=2)
        for v in ("s1", "lb1", "lb2"):
            answer = voters[v].renew("s3", 1, 1.0, held=lease.held)
            if answer is Renewal.GRANTED:
                lease.granted(v, 1.0)
        self.assertIs(voters["s1"].renew("s3", 1, 1.0, held=False), Renewal.STALE)
        self.assertFalse(lease.valid(1.1))

    def test_single_server_always_holds(self):
        """A cluster of one is its own majority."""
        self.assertTrue(Lease("s1", ("s1",), T).valid(0.0))


class MembershipTests(SynchronousTestCase):
    def member(self, witnesses=("lb1",)):
        return Membership("s2", 10, ("s1", "s2", "s3"), witnesses, T, now=-10.0)

    def test_verdict_needs_a_majority(self):
        """Yes votes from fewer than a majority of voters are no verdict; a majority is, and stays."""
        m = self.member()
        m.voter.renew("s1", 5, 0.0)
        self.assertFalse(m.tally("s1", 5, [("s3", True), ("lb1", True)], 1.0))
        self.assertTrue(m.tally("s1", 5, [("s3", True), ("lb1", True)], 2.0))
        self.assertTrue(m.is_dead("s1", 5))
        self.assertTrue(m.is_dead("s1", 4))
        self.assertFalse(m.is_dead("s1", 6))

    def test_unknown_voters_do_not_count(self):
        """Votes from names that are not voters are ignored."""
        m = self.member()
        self.assertFalse(m.tally("s1", 5, [("intruder", True), ("s9", True), ("s3", True)], 0.0))

    def test_supersession_is_a_verdict(self):
        """Seeing a newer incarnation of a server is a verdict on the older one."""
        m = self.member()
        self.assertIsNone(m.seen("s1", 5))
        self.assertEqual(m.seen("s1", 7), 5)
        self.assertTrue(m.is_dead("s1", 5))
        self.assertFalse(m.is_dead("s1", 7))
        self.assertEqual(m.incarnation_of("s1"), 7)

    def test_begin_new_incarnation(self):
        """A new incarnation starts with no grant; it must be larger."""
        m = self.member()
        m.renewed("s1", Renewal.GRANTED, 0.0)
        m.renewed("lb1", Renewal.GRANTED, 0.0)
        self.assertTrue(m.may_serve(0.5))
        m.begin(11, 0.5)
        self.assertFalse(m.may_serve(0.5))
        self.assertRaises(ValueError, m.begin, 11, 0.5)

    def test_refusal_ends(self):
        """A renewal answered DEAD or STALE tells the server to end this incarnation."""
        m = self.member()
        self.assertTrue(m.renewed("s1", Renewal.GRANTED, 0.0))
        self.assertFalse(m.renewed("s1", Renewal.DEAD, 0.0))
        self.assertFalse(m.renewed("s1", Renewal.STALE, 0.0))

    def test_two_servers_one_witness(self):
        """Two servers and a witness: the server that keeps the witness keeps its lease; the other cannot."""
        a = Membership("s1", 1, ("s1", "s2"), ("lb1",), T, -10.0)
        b = Membership("s2", 2, ("s1", "s2"), ("lb1",), T, -10.0)
        a.renewed("lb1", Renewal.GRANTED, 0.0)
        self.assertTrue(a.may_serve(1.0))
        self.assertFalse(b.may_serve(1.0))


# -- the property: a lease and a verdict never overlap ---------------------

SERVERS = ("s1", "s2", "s3")
VOTERS = SERVERS + ("lb1", "lb2")

actions = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(0.0, 1.0)),
        # server renews with voter; the request takes `delay` to arrive, the answer `back` to return
        st.tuples(st.just("renew"), st.sampled_from(SERVERS), st.sampled_from(VOTERS), st.floats(0, 0.5), st.floats(0, 0.5)),
        # one round of votes on server, asked of these voters at once
        st.tuples(st.just("round"), st.sampled_from(SERVERS), st.sets(st.sampled_from(VOTERS), min_size=1)),
        st.tuples(st.just("restart_voter"), st.sampled_from(VOTERS)),
    ),
    max_size=80,
)
rates = st.fixed_dictionaries({v: st.floats(1 - T.drift, 1 + T.drift) for v in VOTERS})


class NoOverlapTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(actions, rates)
    def test_lease_and_verdict_never_overlap(self, script, rate):
        """Under any delays, rounds of votes, voter restarts and clock rates within the drift bound, no server holds its lease once a round found a majority holding it dead."""
        now = 0.0

        def clock(p, t):
            return 1000.0 + t * rate[p]

        voters = {v: Voter(T.lease, clock(v, 0.0) - 100) for v in VOTERS}
        leases = {s: Lease(s, VOTERS, T) for s in SERVERS}
        in_flight = []  # (deliver at, server, voter, asked at server clock, back)
        answers = []  # (arrive at, server, voter, asked)
        verdict = {s: False for s in SERVERS}

        def check(t):
            for s in SERVERS:
                if verdict[s]:
                    self.assertFalse(leases[s].valid(clock(s, t)), f"{s} holds its lease after a verdict at t={t}")

        def advance(to):
            nonlocal now
            while True:
                due = [m for m in in_flight if m[0] <= to] + [a for a in answers if a[0] <= to]
                if not due:
                    break
                first = min(due, key=lambda m: m[0])
                now = first[0]
                if first in in_flight:
                    in_flight.remove(first)
                    _, s, v, asked, back = first
                    if voters[v].renew(s, 1, clock(v, now), leases[s].held) is Renewal.GRANTED:
                        answers.append((now + back, s, v, asked))
                else:
                    answers.remove(first)
                    _, s, v, asked = first
                    leases[s].granted(v, asked)
                check(now)
            now = to
            check(now)

        for action in script:
            kind = action[0]
            if kind == "wait":
                advance(now + action[1])
            elif kind == "renew":
                _, s, v, delay, back = action
                in_flight.append((now + delay, s, v, clock(s, now), back))
            elif kind == "round":
                _, s, asked = action
                yes = [v for v in asked if v != s and voters[v].vote(s, 1, clock(v, now))]
                if len(yes) >= majority(VOTERS):
                    verdict[s] = True
                check(now)
            elif kind == "restart_voter":
                # a restarted voter forgets its grants and its votes (a
                # verdict reached with its vote stands all the same)
                v = action[1]
                voters[v] = Voter(T.lease, clock(v, now), born=2)
        advance(now + 5.0)
