"""
Group commit, boxcars and time-of-day windows, with a fake clock and a fake
peer.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appliance.config import BatchWindow, ClusterSettings
from appliance.core.batching import batch_limits
from appliance.core.session import Delta
from appliance.core.store import Result
from appliance.replication import wire
from appliance.replication.link import PeerUnavailable
from appliance.replication.replicator import Replicator

NODES = {"s1", "s2"}


def delta(i: int, size: int = 1) -> Delta:
    return Delta("D" * 21 + "x", 1, i, "s1", "s2", {"k": b'"' + b"v" * size + b'"'}, ())


class FakePeer:
    def __init__(self):
        self.calls = []

    def __call__(self, peer, name, chunks):
        d = defer.Deferred()
        self.calls.append((peer, name, wire.decode(wire.join(chunks, 10**9), NODES), d))
        return d

    def answer(self, index, results=None):
        records, d = self.calls[index][2], self.calls[index][3]
        d.callback(wire.encode_results(results or [Result.OK] * len(records)))


def make(mode="sync", minute=600, **kw):
    clock, peer = Clock(), FakePeer()
    settings = ClusterSettings(name="c.test", secret="x" * 8, replication=mode, **kw)
    return clock, peer, Replicator(clock, settings, peer, lambda: minute)


class GroupCommitTests(SynchronousTestCase):
    def test_one_call_per_turn(self):
        """Records queued in one reactor turn leave in one PB call."""
        clock, peer, r = make()
        ds = [r.send("s2", delta(i)) for i in range(5)]
        self.assertEqual(peer.calls, [])
        clock.advance(0)
        self.assertEqual(len(peer.calls), 1)
        self.assertEqual([rec.version for rec in peer.calls[0][2]], [0, 1, 2, 3, 4])
        peer.answer(0)
        self.assertEqual([self.successResultOf(d) for d in ds], [Result.OK] * 5)

    def test_one_batch_in_flight(self):
        """While a batch is in flight the next accumulates and leaves when it is answered."""
        clock, peer, r = make()
        r.send("s2", delta(1))
        clock.advance(0)
        later = [r.send("s2", delta(i)) for i in (2, 3)]
        clock.advance(0)
        self.assertEqual(len(peer.calls), 1)
        self.assertEqual(r.unreplicated(), 3)
        peer.answer(0)
        clock.advance(0)
        self.assertEqual(len(peer.calls), 2)
        self.assertEqual([rec.version for rec in peer.calls[1][2]], [2, 3])
        peer.answer(1, [Result.GAP, Result.FENCED])
        self.assertEqual([self.successResultOf(d) for d in later], [Result.GAP, Result.FENCED])
        self.assertEqual(r.unreplicated(), 0)

    def test_failure_fails_each_record(self):
        """A failed call fails every record of the batch with PeerUnavailable."""
        clock, peer, r = make()
        ds = [r.send("s2", delta(i)) for i in range(3)]
        clock.advance(0)
        peer.calls[0][3].errback(PeerUnavailable("s2"))
        for d in ds:
            self.failureResultOf(d).trap(PeerUnavailable)

    def test_fail_peer_drops_queue(self):
        """When a link is lost, everything queued for it fails at once."""
        clock, peer, r = make()
        d = r.send("s2", delta(1))
        r.fail("s2")
        self.failureResultOf(d).trap(PeerUnavailable)
        clock.advance(0)
        self.assertEqual(peer.calls, [])

    def test_hold_and_release(self):
        """A held queue (link resyncing) sends nothing until released."""
        clock, peer, r = make()
        r.hold("s2")
        r.send("s2", delta(1))
        clock.advance(5)
        self.assertEqual(peer.calls, [])
        r.release("s2")
        self.assertEqual(len(peer.calls), 1)

    def test_bulk_queues_apart_in_sync_mode(self):
        """
        In sync mode a mass job's records leave in calls of their own: a
        request's record leaves while a bulk batch is in flight, and hold,
        fail and unreplicated cover both queues.
        """
        clock, peer, r = make()
        bulk = [r.send("s2", delta(i), bulk=True) for i in range(3)]
        clock.advance(0)
        self.assertEqual(len(peer.calls), 1)
        live = r.send("s2", delta(7))
        clock.advance(0)
        self.assertEqual(len(peer.calls), 2)
        self.assertEqual([rec.version for rec in peer.calls[1][2]], [7])
        self.assertEqual(r.unreplicated(), 4)
        peer.answer(1)
        self.assertEqual(self.successResultOf(live), Result.OK)
        self.assertNoResult(bulk[0])
        r.hold("s2")
        held = [r.send("s2", delta(8)), r.send("s2", delta(9), bulk=True)]
        peer.answer(0)
        clock.advance(5)
        self.assertEqual(len(peer.calls), 2)
        r.release("s2")
        clock.advance(0)
        self.assertEqual(sorted(rec.version for call in peer.calls[2:] for rec in call[2]), [8, 9])
        peer.answer(2)
        peer.answer(3)
        self.assertEqual([self.successResultOf(d) for d in held], [Result.OK] * 2)
        queued = [r.send("s2", delta(10)), r.send("s2", delta(11), bulk=True)]
        self.assertEqual(r.unreplicated(), 2)
        r.fail("s2")
        for d in queued:
            self.failureResultOf(d).trap(PeerUnavailable)
        self.assertEqual(r.unreplicated(), 0)

    def test_bulk_shares_the_queue_when_not_sync(self):
        """In async mode (nothing waits for an answer) bulk records keep one queue, in order."""
        clock, peer, r = make("async")
        r.send("s2", delta(1), bulk=True)
        clock.advance(0)
        r.send("s2", delta(2))
        clock.advance(0)
        self.assertEqual(len(peer.calls), 1)
        peer.answer(0)
        clock.advance(0)
        self.assertEqual([rec.version for rec in peer.calls[1][2]], [2])

    def test_large_batches_split(self):
        """A queue larger than the batch byte cap leaves as several calls, in order."""
        clock, peer, r = make()
        for i in range(5):
            r.send("s2", delta(i, size=400 * 1024))
        clock.advance(0)
        peer.answer(0)
        clock.advance(0)
        peer.answer(1)
        clock.advance(0)
        versions = [rec.version for call in peer.calls for rec in call[2]]
        self.assertEqual(versions, [0, 1, 2, 3, 4])
        self.assertGreater(len(peer.calls), 1)


class BatchedTests(SynchronousTestCase):
    def test_flush_on_count(self):
        """A boxcar leaves as soon as it holds batch_count updates."""
        clock, peer, r = make("batched", batch_count=3, batch_interval=10.0)
        r.send("s2", delta(1))
        r.send("s2", delta(2))
        clock.advance(1)
        self.assertEqual(peer.calls, [])
        self.assertEqual(r.unreplicated(), 2)
        r.send("s2", delta(3))
        self.assertEqual(len(peer.calls), 1)

    def test_flush_on_interval(self):
        """A boxcar leaves after batch_interval even if not full."""
        clock, peer, r = make("batched", batch_count=100, batch_interval=10.0)
        r.send("s2", delta(1))
        clock.advance(9.9)
        self.assertEqual(peer.calls, [])
        clock.advance(0.1)
        self.assertEqual(len(peer.calls), 1)

    def test_urgent_leaves_at_once(self):
        """A session's whole state for a new backup leaves at once in batched mode, with the deltas queued before it."""
        clock, peer, r = make("batched", batch_count=100, batch_interval=10.0)
        r.send("s2", delta(1))
        r.send("s2", delta(2), urgent=True)
        clock.advance(0)
        self.assertEqual(len(peer.calls), 1)
        self.assertEqual(r.unreplicated(), 2)

    def test_windows(self):
        """Inside a window its count applies; outside every window updates leave at once."""
        windows = (BatchWindow(8 * 60, 20 * 60, 2, 5.0),)
        settings = ClusterSettings(name="c.test", secret="x" * 8, replication="batched", batch_windows=windows)
        self.assertEqual(batch_limits(settings, 12 * 60), (2, 5.0))
        self.assertIsNone(batch_limits(settings, 21 * 60))
        clock, peer, r = make("batched", minute=21 * 60, batch_windows=windows)
        r.send("s2", delta(1))
        clock.advance(0)
        self.assertEqual(len(peer.calls), 1)

    def test_sync_and_async_never_batch(self):
        """sync and async modes send at the end of the turn."""
        for mode in ("sync", "async"):
            settings = ClusterSettings(name="c.test", secret="x" * 8, replication=mode)
            self.assertIsNone(batch_limits(settings, 600))

    def test_local_time_only_for_windows(self):
        """Local time is read only in batched mode with time-of-day windows, not once per record otherwise."""
        windows = (BatchWindow(8 * 60, 20 * 60, 1, 5.0),)
        for mode, kw, consulted in (
            ("sync", {}, False),
            ("async", {}, False),
            ("batched", {}, False),
            ("batched", {"batch_windows": windows}, True),
        ):
            asked = []
            settings = ClusterSettings(name="c.test", secret="x" * 8, replication=mode, batch_count=1, **kw)
            clock, peer = Clock(), FakePeer()
            r = Replicator(clock, settings, peer, lambda: asked.append(1) or 12 * 60)
            d = r.send("s2", delta(1))
            clock.advance(0)
            peer.answer(0)
            self.assertEqual(self.successResultOf(d), Result.OK)
            self.assertEqual(bool(asked), consulted, (mode, kw))


class MalformedAnswerTests(SynchronousTestCase):
    def test_unknown_code_fails_only_its_record(self):
        """An answer with one unknown result code fails that record as unreadable; the others are delivered."""
        from appliance.replication.replicator import Unreadable

        clock, peer, r = make()
        ds = [r.send("s2", delta(i)) for i in range(3)]
        clock.advance(0)
        peer.calls[0][3].callback(b"\x00\x09\x01")
        self.assertEqual(self.successResultOf(ds[0]), Result.OK)
        self.failureResultOf(ds[1]).trap(Unreadable)
        self.assertEqual(self.successResultOf(ds[2]), Result.DUPLICATE)
        self.flushLoggedErrors()

    def test_mismatched_answer_is_unreadable_not_a_lost_peer(self):
        """An answer that does not match the batch fails its records as unreadable, not as a lost peer."""
        from appliance.replication.replicator import Unreadable

        clock, peer, r = make()
        ds = [r.send("s2", delta(i)) for i in range(2)]
        clock.advance(0)
        peer.calls[0][3].callback("not bytes")
        for d in ds:
            f = self.failureResultOf(d)
            f.trap(Unreadable)
            self.assertFalse(f.check(PeerUnavailable))
        self.flushLoggedErrors()
