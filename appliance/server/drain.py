"""
Graceful drain: a session server that is asked to stop (SIGTERM, or an
operator's request) first gives its sessions away, so that its exit costs
nothing.

The order (L{Drain.run}):

1. It is draining: its health says so (the balancers send it no new
   sessions) and its request path serves only the sessions it still owns;
   a new session, or one that has moved, is answered "not served" and the
   balancer sends the request on to the next server.
2. Every peer is told it is leaving (L{Leaving.leaving} there): the peer
   places no copy on it any more and re-protects, elsewhere, its own
   primaries this node backs.
3. Each of its primaries is handed to a peer (its secondary when that one
   can take it), in batches, under each session's lock here: the peer
   becomes primary at epoch + 1 under its own lock, sends the whole state
   to a new secondary, and answers only once that secondary acknowledged
   (L{Leaving.take}).  Only then is the copy here dropped.  The ownership
   rule holds throughout: the new owner has the session, protected,
   before the old one lets go; the old copy can never be served again.
4. It waits for its requests in flight and for its replication queues to
   empty, then the process exits, after C{drain_timeout} at the latest,
   logging what it could not hand over (those sessions stay backed up on
   their secondaries, which promote them once this node is gone: its
   refused port is the proof).

It keeps its lease and its vote until it exits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from appliance.core.session import Full, Session
from appliance.core.store import Fenced
from appliance.replication import wire
from appliance.replication.link import PeerUnavailable
from appliance.replication.peer import NotNow
from appliance.replication.wire import Take
from appliance.server.errors import Unprotected
from appliance.server.protection import SLICE, WINDOW

if TYPE_CHECKING:  # pragma: no cover
    from appliance.server.node import SessionNode

log = Logger()

#: Sessions handed over in one call, at most (and at most BATCH_BYTES),
#: and calls in flight at once: the receiver takes a call's sessions in
#: one reactor turn, so the sizes of a mass job's slices (with 500 and 4,
#: drains of ~6,700 primaries on a loaded machine stalled the reactors
#: past the heartbeats and leases lapsed).
BATCH = SLICE
BATCH_BYTES = 1024 * 1024
PARALLEL = WINDOW
#: How often the drain looks again at what it waits for.
POLL = 0.05


@attrs.define
class Report:
    """
    What a drain did: primaries handed over, stale copies dropped, and
    what was left when it ended (primaries not handed over, requests still
    in flight, records still queued).
    """

    handed: int = 0
    stale: int = 0
    left: List[str] = attrs.field(factory=list)
    in_flight: int = 0
    queued: int = 0
    timed_out: bool = False


class Drain:
    """
    The draining side.  C{unreplicated()} counts what the replicator still
    holds, C{flush()} sends it.  C{linger}: how long after it starts the
    drain goes on answering "not served" at least (while another node can
    serve), so that every balancer's health check has seen it draining and
    sends it nothing more before its port closes.
    """

    def __init__(self, node: "SessionNode", flush, unreplicated, timeout: float, linger: float = 0.0):
        self.node = node
        self.flush = flush
        self.unreplicated = unreplicated
        self.timeout = timeout
        self.linger = linger
        self.report = Report()
        self._deadline = 0.0

    def _now(self) -> float:
        return self.node.clock.seconds()

    def _left(self) -> float:
        return self._deadline - self._now()

    @defer.inlineCallbacks
    def run(self):
        """
        Drain; fires with the L{Report}, within C{timeout}, never fails.
        """
        node = self.node
        self._deadline = self._now() + self.timeout
        node.draining = True
        log.info("draining: {n} primaries to hand over", n=node.store.primaries)
        peers = [p.name for p in node.peers if node.connected(p.name)]
        leaving = [
            node.call(peer, "leaving").addErrback(lambda f, peer=peer: log.info(
                "{peer} did not re-protect the sessions this node backs: {why}", peer=peer,
                why=f.getErrorMessage()))
            for peer in peers
        ]
        told = defer.DeferredList(leaving, consumeErrors=True)
        try:
            yield self._hand_over_all()
        except Exception:
            log.failure("drain: handing over failed")
        yield self._until(lambda: told.called)
        node.send_touches()
        self.flush()
        yield self._until(lambda: self.unreplicated() == 0 and len(node.locks) == 0)
        started = self._deadline - self.timeout
        yield self._until(
            lambda: self._now() - started >= self.linger or not any(node.may_place(p.name) for p in node.peers)
        )
        r = self.report
        r.left = [s.sid for s in node.store.owned()]
        r.in_flight = len(node.locks)
        r.queued = self.unreplicated()
        r.timed_out = self._left() <= 0
        if r.left or r.in_flight or r.queued:
            log.warn(
                "drained with {left} primaries not handed over, {in_flight} requests in flight"
                " and {queued} records unreplicated; their secondaries promote them once this node is gone",
                left=len(r.left), in_flight=r.in_flight, queued=r.queued,
            )
        else:
            log.info("drained: {n} primaries handed over", n=r.handed)
        return r

    @defer.inlineCallbacks
    def _until(self, done):
        while not done() and self._left() > 0:
            yield task.deferLater(self.node.clock, min(POLL, max(self._left(), 0)), lambda: None)

    @defer.inlineCallbacks
    def _hand_over_all(self):
        """
        Rounds of hand-overs until no primary is left or time is up; a
        round that moves nothing waits a heartbeat (peers busy, or none
        that can take a session now).
        """
        node = self.node
        while self._left() > 0:
            owned = node.store.owned()
            if not owned:
                return
            if not node.quorum.may_serve():
                # Without its lease its copies may be stale: they stay for
                # the failover rules (their backups are promoted once this
                # node is gone).
                return
            batches = self._batches(owned)
            if not batches:
                # No peer can take a session (none is up, or all drain).
                return
            before = self.report.handed + self.report.stale
            # A batch that fails is offered again in the next round.
            yield node.protection.slices(
                batches, lambda part: self._hand_over(*part[0]), lambda: True, size=1, window=PARALLEL
            ).addErrback(lambda _: None)
            if self.report.handed + self.report.stale == before:
                yield task.deferLater(node.clock, min(node.quorum.interval, max(self._left(), 0)), lambda: None)

    def _batches(self, owned: List[Session]) -> List[Tuple[str, List[str]]]:
        """
        Who takes each primary (its secondary if that one can, else the
        placement rule's pick), in batches.
        """
        node = self.node
        by_peer: Dict[str, List[str]] = {}
        for session in owned:
            peer = session.secondary
            if peer is None or not node.may_place(peer):
                peer = node.pick_secondary()
            if peer is not None:
                by_peer.setdefault(peer, []).append(session.sid)
        out = []
        for peer, sids in sorted(by_peer.items()):
            for i in range(0, len(sids), BATCH):
                out.append((peer, sids[i : i + BATCH]))
        return out

    @defer.inlineCallbacks
    def _hand_over(self, peer: str, sids: List[str]):
        handed, stale = yield offer(self.node, peer, sids)
        self.report.handed += handed
        self.report.stale += stale


@defer.inlineCallbacks
def offer(node: "SessionNode", peer: str, sids: List[str]):
    """
    Offer C{sids} (primaries here) to C{peer} under their locks (a session
    busy with a request waits for the next round) and drop each copy it
    took; fires with (taken, stale).  What a drain does, and what a
    rebalance does to move a primary.
    """
    store, locks = node.store, node.locks
    now = node.now()
    locked: List[str] = []
    records: List[Full] = []
    size = 0
    handed = stale = 0
    for sid in sids:
        session = store.primary_of(sid)
        if session is None or not locks.try_take(sid):
            continue
        locked.append(sid)
        full = session.full(now)
        records.append(full)
        size += session.size
        if size >= BATCH_BYTES:
            break
    if not records:
        return handed, stale
    try:
        try:
            answer = yield node.call(peer, "take", wire.split(wire.encode(records)))
            takes = wire.decode_takes(answer, len(records))
        except NotNow as e:
            log.info("{peer} took none of {n} sessions handed over: {why}", peer=peer, n=len(records), why=str(e))
            return handed, stale
        except (PeerUnavailable, wire.WireError) as e:
            # Whether it took them is unknown: serve them no more (they
            # may have a new owner); their secondaries keep them.
            for full in records:
                store.demote(full.sid, full.epoch)
            log.info("{peer} did not answer a hand-over ({why}): {n} sessions no longer served here",
                     peer=peer, why=type(e).__name__, n=len(records))
            return handed, stale
        for full, take in zip(records, takes):
            if take is Take.BUSY:
                continue
            if store.primary_of(full.sid) is not None:
                store.drop(full.sid)
            if take is Take.TAKEN:
                node.moved.add(full.sid, now)
                handed += 1
            else:
                stale += 1
        return handed, stale
    finally:
        for sid in locked:
            locks.release(sid)


class Leaving:
    """
    The other side: what a node does for a draining peer.
    """

    def __init__(self, node: "SessionNode"):
        self.node = node
        #: Draining peers, with the incarnation that said so.
        self.peers: Dict[str, int] = {}

    def draining(self, peer: str) -> bool:
        incarnation = self.peers.get(peer)
        return incarnation is not None and incarnation == self.node.quorum.incarnation_of(peer)

    def leaving(self, peer: str, incarnation: int) -> defer.Deferred:
        """
        C{peer} drains: it gets no new copy, and our primaries it backs
        are re-protected elsewhere; fires when they are (sync: acknowledged).
        """
        node = self.node
        self.peers[peer] = incarnation
        sessions = node.store.backed_by(peer)
        log.info("{peer} is draining: re-protecting the {n} sessions it backs", peer=peer, n=len(sessions))
        protection = node.protection
        return protection.in_slices(
            [s.sid for s in sessions],
            lambda s, peer=peer: protection.protect(s, exclude=(peer,), bulk=True) if s.secondary == peer else None,
        )

    @defer.inlineCallbacks
    def take(self, peer: str, incarnation: int, records: List[Full]):
        """
        Become primary (epoch + 1) of the sessions C{peer} hands over, each
        under its lock, protected before the answer leaves: a L{Take} per
        record.  The backup is the session's secondary if that is another
        node, else C{peer} itself when it may hold a copy (a rebalance:
        it is not draining), else the placement rule's pick.
        """
        node = self.node
        if node.draining or not node.quorum.may_serve():
            raise NotNow("this node cannot take sessions now")
        store, locks = node.store, node.locks
        now = node.now()
        answers: List[Take] = []
        waits = []
        taken: List[Tuple[str, int]] = []
        for full in records:
            sid = full.sid
            if not locks.try_take(sid):
                answers.append(Take.BUSY)
                continue
            local = store.get(sid)
            if local is not None and (local.epoch > full.epoch or store.mine(local)):
                # Ours already (an offer made again after its answer was
                # lost), or someone newer's: either way the offer is void.
                locks.release(sid)
                answers.append(Take.TAKEN if store.mine(local) and local.epoch == full.epoch + 1 else Take.STALE)
                continue
            # A rebalance swaps roles: the giver, not draining, keeps its
            # copy as the backup.  Otherwise the session keeps its
            # secondary when that one can back it still.
            secondary = peer if full.secondary == node.name else full.secondary
            pinned = node.me.secondary
            if secondary in (None, node.name) or not node.may_place(secondary) or (pinned and secondary not in pinned):
                secondary = node.pick_secondary((peer,))
            session = store.adopt(attrs.evolve(full, epoch=full.epoch + 1), secondary, now)
            taken.append((sid, session.epoch))
            answers.append(Take.TAKEN)
            if secondary is None:
                waits.append(defer.succeed(None))
            else:
                waits.append(node.protection.deliver(secondary, session.full(now), (peer,), bulk=True))
        if taken:
            log.info("took {n} sessions over from {peer}", n=len(taken), peer=peer)
        results = yield defer.DeferredList(waits, consumeErrors=True)
        for (sid, epoch), (ok, result) in zip(taken, results):
            locks.release(sid)
            if not ok and not result.check(Unprotected, Fenced, PeerUnavailable):
                log.failure("protecting {sid} taken from {peer}", result, sid=sid, peer=peer)
        return answers
