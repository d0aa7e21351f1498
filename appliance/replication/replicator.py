"""
Per-peer queues that turn single records into batched PB calls.

Group commit: records queued during one reactor turn leave together in one
call, one call in flight per peer; what queues meanwhile leaves as the next
call when the first is answered.  In C{batched} mode a queue waits until it
holds C{count} records or C{interval} has passed.  The batch crosses PB as
one compact byte string (L{wire}), split in chunks under Banana's limit.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from appliance.config import ClusterSettings
from appliance.core.batching import batch_limits
from appliance.core.counters import SECONDS, Histogram
from appliance.core.store import Record, Result
from appliance.replication import wire
from appliance.replication.link import PeerUnavailable

log = Logger()

BATCH_BYTES = 1024 * 1024
# The answer bytes counted for the metrics, and those that need no look.
_GAP, _FENCED = int(Result.GAP), int(Result.FENCED)
_ACKED = bytes([Result.OK, Result.DUPLICATE])


class Unreadable(Exception):
    """
    The peer answered, but its answer to this record could not be read:
    whether it applied the record is unknown.  The link is up.
    """


class PeerCounts:
    """
    What left for one peer: records by kind (indexed by their first byte,
    see L{wire.RECORD_KINDS}), bytes, and records it answered "gap" to.
    """

    __slots__ = ("kinds", "bytes", "gaps")

    def __init__(self) -> None:
        self.kinds = [0] * len(wire.RECORD_KINDS)
        self.bytes = 0
        self.gaps = 0


class _Queue:
    __slots__ = ("peer", "table", "pending", "in_flight", "timer", "due", "sent_at")

    def __init__(self, peer: str, table: Dict[str, "_Queue"]):
        self.peer = peer
        #: The table this queue belongs to while it is the peer's queue.
        self.table = table
        self.pending: List[Tuple[bytes, defer.Deferred]] = []
        self.in_flight = 0
        self.timer = None
        self.due = False
        self.sent_at = 0.0


class Replicator:
    """
    C{call(peer, name, *args)} sends a PB call on the link to C{peer};
    C{minute_of_day()} gives local time for batching windows.

    With C{settings.metrics} it counts, per peer, what left (L{PeerCounts}),
    the records answered "fenced" (L{fenced}) and each batch's round trip
    (L{ack}, seconds from the call to its answer).
    """

    def __init__(
        self,
        clock,
        settings: ClusterSettings,
        call: Callable[..., defer.Deferred],
        minute_of_day: Callable[[], int],
    ):
        self.clock = clock
        self.settings = settings
        self._call = call
        self._minute = minute_of_day
        self._queues: Dict[str, _Queue] = {}
        # In sync mode a mass job's records (re-protection, promotion,
        # resync, drain, rebalance) queue apart, one call of their own in
        # flight: a live request's change does not wait behind a megabyte
        # of other sessions' full states.
        self._bulk: Dict[str, _Queue] = {}
        self._held: Set[str] = set()
        self.counts: Optional[Dict[str, PeerCounts]] = {} if settings.metrics else None
        self.ack = Histogram(SECONDS)
        self.fenced = 0

    def _limits(self):
        """
        L{batch_limits} now.  Local time is read only when batching windows
        make it matter: C{time.localtime} costs a C{stat} of the zone file
        per call, and sync mode asks this three times per record.
        """
        settings = self.settings
        if settings.replication != "batched":
            return None
        return batch_limits(settings, self._minute() if settings.batch_windows else 0)

    def _queue(self, peer: str, bulk: bool) -> _Queue:
        table = self._bulk if bulk and self.settings.replication == "sync" else self._queues
        q = table.get(peer)
        if q is None:
            q = table[peer] = _Queue(peer, table)
        return q

    def _all(self) -> Iterator[_Queue]:
        yield from list(self._queues.values())
        yield from list(self._bulk.values())

    def unreplicated(self) -> int:
        """
        Updates queued or sent but not yet acknowledged, over all peers: the
        window that a crash now would lose in async and batched modes.
        """
        return sum(len(q.pending) + q.in_flight for q in self._all())

    def send(self, peer: str, record: Record, urgent: bool = False, bulk: bool = False) -> defer.Deferred:
        """
        Queue C{record} for C{peer}; the Deferred fires with the peer's
        L{Result} or fails with L{PeerUnavailable}.  An C{urgent} record
        (a session's whole state for a new backup) leaves with the next
        call, batching or not: a session is never left with one copy for a
        batch interval.  A C{bulk} record (one of a mass job's) queues apart
        from the requests' in sync mode.
        """
        d = defer.Deferred()
        q = self._queue(peer, bulk)
        q.pending.append((wire.encode_record(record), d))
        held = peer in self._held
        if urgent and not q.in_flight and not held and self._limits() is not None:
            # Batching: leave at the end of this turn, not after the interval.
            if q.timer is not None and q.timer.active():
                q.timer.cancel()
            q.timer = self.clock.callLater(0, self._flush, q)
            return d
        if urgent:
            q.due = q.due or bool(q.in_flight or held)
        self._arrange(q)
        return d

    def flush(self) -> None:
        """
        Send what every queue holds now, batching or not (a draining node
        leaves nothing queued).
        """
        for q in self._all():
            if q.pending:
                q.due = True
                self._arrange(q)

    def hold(self, peer: str) -> None:
        """
        Keep records for C{peer} queued (while a reconnected link resyncs).
        """
        self._held.add(peer)

    def release(self, peer: str) -> None:
        self._held.discard(peer)
        for table in (self._queues, self._bulk):
            q = table.get(peer)
            if q is not None and q.pending:
                q.due = True
                self._arrange(q)

    def fail(self, peer: str) -> None:
        """
        The link to C{peer} is gone: everything queued for it fails.
        """
        self._held.discard(peer)
        for table in (self._queues, self._bulk):
            q = table.pop(peer, None)
            if q is None:
                continue
            if q.timer is not None and q.timer.active():
                q.timer.cancel()
            pending, q.pending = q.pending, []
            for _, d in pending:
                d.errback(PeerUnavailable(peer))

    def _arrange(self, q: _Queue) -> None:
        if q.in_flight or q.peer in self._held:
            return
        limits = self._limits()
        if limits is None:
            if q.due:
                self._flush(q)
            elif q.timer is None:
                q.timer = self.clock.callLater(0, self._flush, q)
        elif q.due or len(q.pending) >= limits[0]:
            self._flush(q)
        elif q.timer is None:
            q.timer = self.clock.callLater(limits[1], self._flush, q)

    def _flush(self, q: _Queue) -> None:
        if q.timer is not None and q.timer.active():
            q.timer.cancel()
        q.timer = None
        if q.in_flight or q.peer in self._held:
            q.due = True
            return
        q.due = False
        if not q.pending or q.table.get(q.peer) is not q:
            return
        taken, size = 0, 0
        for encoded, _ in q.pending:
            if taken and size + len(encoded) > BATCH_BYTES:
                break
            size += len(encoded)
            taken += 1
        batch, q.pending = q.pending[:taken], q.pending[taken:]
        if q.pending:
            q.due = True
        q.in_flight = len(batch)
        payload = wire.batch(encoded for encoded, _ in batch)
        counts = self.counts
        if counts is not None:
            c = counts.get(q.peer)
            if c is None:
                c = counts[q.peer] = PeerCounts()
            kinds = c.kinds
            for encoded, _ in batch:
                kinds[encoded[0]] += 1
            c.bytes += len(payload)
            q.sent_at = self.clock.seconds()
        d = self._call(q.peer, "replicate", wire.split(payload))
        d.addCallbacks(self._answered, self._failed, callbackArgs=(q, batch), errbackArgs=(q, batch))

    def _answered(self, answer, q: _Queue, batch) -> None:
        q.in_flight = 0
        if q.pending and self._limits() is None:
            # Group commit: what accumulated behind this batch leaves before
            # the answered requests are written out, so the next round trip
            # overlaps that work.
            q.due = True
            self._arrange(q)
        try:
            results = wire.decode_results(answer, len(batch))
        except wire.WireError as e:
            log.error("{peer} answered a batch wrongly: {problem}", peer=q.peer, problem=str(e))
            results = [None] * len(batch)
        else:
            unknown = results.count(None)
            if unknown:
                log.error("{peer} answered {n} records of a batch with unknown codes", peer=q.peer, n=unknown)
            counts = self.counts
            if counts is not None:
                self.ack.observe(self.clock.seconds() - q.sent_at)
                refused = answer.translate(None, _ACKED)
                if refused:
                    counts[q.peer].gaps += refused.count(_GAP)
                    self.fenced += refused.count(_FENCED)
        for (_, d), result in zip(batch, results):
            if result is None:
                d.errback(Unreadable(q.peer))
            else:
                d.callback(result)
        self._arrange(q)

    def _failed(self, failure, q: _Queue, batch) -> None:
        q.in_flight = 0
        if not failure.check(PeerUnavailable):
            log.failure("replication to {peer} failed", failure, peer=q.peer)
        for _, d in batch:
            d.errback(PeerUnavailable(q.peer))
        self._arrange(q)

