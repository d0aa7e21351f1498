"""
Join and rebalance, paced by the reactor: each round (a second apart),
this node asks its peers for their counts, lets
L{appliance.core.rebalance.plan} decide which of its sessions move where,
and makes at most C{rebalance_rate} moves a second.

* A backup moves under the session's lock: the new secondary gets the full
  state, and only once it acknowledged is the old backup removed, so the
  session has two copies throughout (three for a moment).
* A primary moves to its secondary through the drain's hand-over
  (L{appliance.server.drain.offer}): under the session's lock here, the
  secondary becomes primary at epoch + 1 under its own, with this node as
  its backup, and answers once this node acknowledged that backup.  This
  node then answers "not served" to a request whose cookie still names it
  (L{appliance.core.rebalance.Moved}), and the balancer goes on to the new
  primary, whose answer carries the new cookie.

Nothing moves unless the cluster is calm: every server up, linked, holding
its lease, answering, and none draining (a server that is gone for good
leaves the config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional

from twisted.internet import defer, task
from twisted.logger import Logger

from appliance.core.rebalance import BACKUP, PRIMARY, Counts, Move, Pacer, plan
from appliance.core.session import Remove
from appliance.server.drain import BATCH, offer

if TYPE_CHECKING:  # pragma: no cover
    from appliance.server.node import SessionNode

log = Logger()

#: Seconds between rounds.
INTERVAL = 1.0


def decode_counts(answer) -> Optional[Counts]:
    """
    A peer's answer to C{counts}, or C{None} when it takes no part (or
    answered wrongly).
    """
    if not isinstance(answer, (list, tuple)) or len(answer) != 2:
        return None
    try:
        return Counts(*answer)
    except (TypeError, ValueError):
        return None


class Rebalancer:
    """
    Node C{node}'s rounds of moves, C{rate} sessions a second at most.
    """

    def __init__(self, node: "SessionNode", rate: float, interval: float = INTERVAL):
        self.node = node
        self.interval = interval
        self.pacer = Pacer(rate, max(1.0, rate * interval), node.now())
        self.moved: Dict[str, int] = {BACKUP: 0, PRIMARY: 0}
        self._loop: Optional[task.LoopingCall] = None
        self._round: Optional[defer.Deferred] = None

    def start(self) -> None:
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.node.clock
        self._loop.start(self.interval, now=False).addErrback(lambda f: log.failure("rebalancing failed", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> None:
        """
        Start a round unless one is still going.
        """
        if self._round is not None:
            return
        self._round = d = self.round()
        d.addErrback(lambda f: log.failure("rebalance round failed", f))
        d.addBoth(self._ended)

    def _ended(self, _) -> None:
        self._round = None

    @defer.inlineCallbacks
    def counts(self):
        """
        Every server's counts (this one's included), or C{None} when the
        cluster is not calm: this node or another drains, is down, does not
        hold its lease or does not answer.  Then failover and re-protection
        have the work to do, and moving sessions too would only add load.
        """
        node = self.node
        mine = node.counts()
        if mine is None or not all(node.may_place(p.name) for p in node.peers):
            return None
        peers = [p.name for p in node.peers]
        answers = yield defer.DeferredList([node.call(p, "counts") for p in peers], consumeErrors=True)
        out = {node.name: Counts(*mine)}
        for peer, (ok, answer) in zip(peers, answers):
            counts = decode_counts(answer) if ok else None
            if counts is None or not node.may_place(peer):
                return None
            out[peer] = counts
        return out

    @defer.inlineCallbacks
    def round(self):
        """
        One round: fires with the moves made.
        """
        node = self.node
        budget = self.pacer.available(node.now())
        if budget <= 0:
            return []
        counts = yield self.counts()
        if counts is None or len(counts) < 2 or not node.quorum.may_serve():
            return []
        store = node.store
        nodes = {name: node.cluster.node(name) for name in counts}
        mine = {peer: store.backed_count(peer) for peer in counts if peer != node.name}
        moves = plan(
            node.me, nodes, counts, mine, lambda peer: (s.sid for s in store.backed_by(peer)), budget, node.me.secondary
        )
        if not moves:
            return []
        self.pacer.spend(len(moves))
        backups = [m for m in moves if m.kind == BACKUP]
        locked = (node.protection.locked(m.sid, lambda s, m=m: self._move_backup(s, m)) for m in backups)
        work = [d for d in locked if d is not None]
        by_peer: Dict[str, List[str]] = {}
        for m in moves:
            if m.kind == PRIMARY:
                by_peer.setdefault(m.to, []).append(m.sid)
        for peer, sids in sorted(by_peer.items()):
            for i in range(0, len(sids), BATCH):
                d = offer(node, peer, sids[i : i + BATCH]).addCallback(self._handed)
                work.append(d.addErrback(lambda f, peer=peer: log.failure("hand-over to {peer} failed", f, peer=peer)))
        yield defer.DeferredList(work, consumeErrors=True)
        self.moved[BACKUP] += len(backups)
        log.info(
            "rebalance: {backups} backup and {primaries} primary moves ({counts})",
            backups=len(backups), primaries=len(moves) - len(backups),
            counts=" ".join(f"{n}={c.primaries}/{c.backups}" for n, c in sorted(counts.items())),
        )
        return moves

    def _handed(self, result) -> None:
        handed, _ = result
        self.moved[PRIMARY] += handed

    def _move_backup(self, session, move: Move) -> Optional[defer.Deferred]:
        """
        Under the session's lock: its full state to the new secondary;
        once that acknowledged, the old backup goes.
        """
        node = self.node
        if session.secondary != move.source or not node.may_place(move.to):
            return None
        now = node.now()
        full = node.store.set_secondary(session, move.to, now)
        d = node.protection.deliver(move.to, full, bulk=True)

        def acknowledged(_):
            # Still ours and backed elsewhere: the old copy is one too many.
            if node.store.primary_of(session.sid) is session and session.secondary != move.source:
                node.send(move.source, Remove(session.sid, session.epoch)).addErrback(node.background_failure)

        return d.addCallback(acknowledged)
