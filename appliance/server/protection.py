"""
Keeping every session protected by a second copy: what a replication answer
means for a session (acknowledged, send the full state, fenced, pick another
secondary), re-protection when a secondary is lost, promotion of the backups
of a primary once it is voted dead, the search for the newest copy of a
session, and digests.

The rules are L{appliance.core.store} and L{appliance.core.membership};
this module sequences them with the links, under the session locks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Tuple

from attrs import frozen
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.core.session import Full, Remove, Rotate, Session, Touch
from appliance.core.store import GONE, Fenced, Record, Result
from appliance.replication import wire
from appliance.replication.link import PeerUnavailable
from appliance.replication.peer import decode_sids
from appliance.replication.replicator import Unreadable
from appliance.server.errors import NotServing, Unprotected
from appliance.server.locks import Busy

if TYPE_CHECKING:  # pragma: no cover
    from appliance.server.node import SessionNode

log = Logger()

#: Digest entries per part, about: a part and its answer stay far below
#: Banana's 640 KiB string limit and take the reactor milliseconds.
DIGEST_PART = 10_000
#: Sessions a mass re-protection, promotion or resync handles in one go,
#: in one reactor turn: small, so that live requests never wait long for
#: the reactor (with 1,000 a turn took 100 ms and more, and the p99 of live
#: requests during a re-protection was 400 ms; with 100, 60 ms).
SLICE = 100
#: Slices a mass job keeps under way at once, each waiting for its
#: acknowledgements: two keep the link busy (a fifth faster than one at
#: 200,000 sessions); four put so much ahead of a request's own records
#: on the peer that the p99 of requests taking a session over grew to
#: 250-300 ms.
WINDOW = 2
#: How this node sees another server (L{Protection._others}).
NEVER_SEEN, DEAD, LINKED, NOT_LINKED = "never seen", "dead", "linked", "not linked"
#: Sessions one look-up of a mass promotion asks about: its answer is a
#: few bytes per session held, and the peer answers it in a millisecond.
LOCATE_PART = 2_000


@frozen
class Copy:
    """
    One node's copy of a session, as a look-up reports it.
    """

    sid: str
    holder: str
    epoch: int
    version: int
    primary: str
    primary_inc: int

    @property
    def rank(self) -> Tuple[int, int, bool, str]:
        """
        Newer first: higher epoch, then version; between equal copies the
        one its primary holds (a primary is never behind its backups), then
        the first holder by name, so that every node picks the same one.
        """
        return (-self.epoch, -self.version, self.holder != self.primary, self.holder)


def newest(copies: Iterable[Copy]) -> Optional[Copy]:
    best = None
    for c in copies:
        if best is None or c.rank < best.rank:
            best = c
    return best


class Protection:
    def __init__(self, node: "SessionNode"):
        self.node = node
        self.store = node.store
        self.locks = node.locks
        self.quorum = node.quorum
        self._watching: Dict[str, int] = {}
        self._runs: Dict[tuple, defer.Deferred] = {}
        #: Per dead peer whose orphans are being promoted: (its incarnation,
        #: the one known at the look-up, {sid: other servers' copies}).
        self._located: Dict[str, Tuple[int, Optional[int], Dict[str, List[Copy]]]] = {}
        #: Digest comparisons that found copies to send again.
        self.resyncs = 0

    # -- delivery ----------------------------------------------------------

    def deliver(self, peer: str, record: Record, avoid: Tuple[str, ...] = (), bulk: bool = False) -> defer.Deferred:
        """
        Send C{record} to C{peer} and see it through: fires once the
        session's latest state is acknowledged by its secondary; fails with
        L{Fenced} when a newer owner refused it and with L{Unprotected} when
        no secondary can be had.  C{avoid}: peers that already failed on
        the way here.  C{bulk}: one of a mass job's records (it queues
        apart from the requests' in sync mode).
        """
        d = self.node.send(peer, record, isinstance(record, Full), bulk)
        args = (peer, record, avoid, bulk)
        d.addCallbacks(self._delivered, self._undelivered, callbackArgs=args, errbackArgs=args)
        return d

    def _delivered(self, result: Result, peer: str, record: Record, avoid: Tuple[str, ...], bulk: bool):
        if result.acknowledged or isinstance(record, (Remove, Touch)):
            return None
        sid = record.sid
        if isinstance(record, Rotate) and result in (Result.FENCED, Result.RIVAL):
            # A newer or a rival owner holds the session under its old id.
            self.store.unrotate(sid, record.old)
            sid = record.old
        if result is Result.FENCED:
            if self.store.fenced(sid, record.epoch):
                self.node.fenced.add(peer=peer)
            raise Fenced(record.sid)
        if result is Result.RIVAL:
            if self.store.demote(sid, record.epoch):
                self.node.rivals.add(peer=peer)
            raise Fenced(record.sid)
        session = self._mine(record.sid)
        if session.secondary == peer:
            return self.deliver(peer, session.full(self.node.now()), avoid, bulk)
        return self.protect(session, avoid, bulk=bulk)

    def _undelivered(self, failure, peer: str, record: Record, avoid: Tuple[str, ...], bulk: bool):
        failure.trap(PeerUnavailable, Unreadable)
        if isinstance(record, (Remove, Touch)):
            return None
        session = self._mine(record.sid)
        if failure.check(Unreadable) and session.secondary == peer and peer not in avoid:
            # The link is up and the peer answered, wrongly: send it the
            # whole state once more before looking for another secondary.
            return self.deliver(peer, session.full(self.node.now()), avoid + (peer,), bulk)
        if session.secondary == peer:
            self.store.set_secondary(session, None, self.node.now())
        return self.protect(session, avoid + (peer,), bulk=bulk)

    def _mine(self, sid: str) -> Session:
        session = self.store.primary_of(sid)
        if session is None:
            raise Fenced(sid)
        return session

    def protect(self, session: Session, exclude: Tuple[str, ...] = (), wait: bool = True, bulk: bool = False) -> defer.Deferred:
        """
        Send the full state to the session's secondary, picking one first
        if it has none (or its link is down).  Without any, the session may
        stay a single copy only when every other server is known dead:
        first wait (a bounded while) for the verdicts on the servers that
        cannot be reached.
        """
        node = self.node
        if session.secondary is None or not node.may_place(session.secondary) or session.secondary in exclude:
            lost = () if session.secondary is None else (session.secondary,)
            self.store.set_secondary(session, node.pick_secondary(exclude + lost), node.now())
        if session.secondary is not None:
            d = self.deliver(session.secondary, session.full(node.now()), exclude, bulk)
            if node.sync:
                return d
            # async and batched: the copy leaves with the next batch; nothing
            # waits for it (not a request, not the session's lock).
            d.addErrback(node.background_failure)
            return defer.succeed(None)
        if self.quorum.alone():
            return defer.succeed(None)
        if not wait:
            return defer.fail(Unprotected(session.sid))
        waits = []
        for server in node.cluster.node_names:
            incarnation = self.quorum.incarnation_of(server)
            if server != node.name and incarnation is not None and not self.quorum.is_dead(server, incarnation):
                waits.append(self.quorum.await_dead(server, incarnation, node.settings.takeover_wait))
        d = defer.gatherResults(waits, consumeErrors=True)

        def again(_):
            if self.store.primary_of(session.sid) is not session:
                raise Fenced(session.sid)
            return self.protect(session, exclude, wait=False, bulk=bulk)

        return d.addCallback(again)

    @property
    def busy(self) -> bool:
        """
        Whether a mass re-protection or promotion runs now.
        """
        return bool(self._runs)

    def once(self, key: tuple, start) -> None:
        """
        Run C{start()} (a Deferred) in the background unless a run of the
        same C{key} is still under way: the mass jobs (re-protecting what a
        lost peer backed, promoting a dead incarnation's sessions) are
        asked for again at every event that may need them, and a second run
        would only redo the first one's work, a million sessions at a time.
        """
        if key in self._runs:
            return
        d = self._runs[key] = start()

        def done(result):
            if self._runs.get(key) is d:
                del self._runs[key]
            return result

        d.addBoth(done).addErrback(self.node.background_failure)

    def locked(self, sid: str, work) -> Optional[defer.Deferred]:
        """
        Run C{work(session)} on one of our primaries under its lock, in the
        background: failures that are part of the job (fenced, no secondary,
        a lost peer, a busy session) are logged quietly.  C{None} when it is
        done at once (a free lock needs no Deferred: a mass job takes a
        hundred thousand of them).
        """
        if self.locks.try_take(sid):
            return self._run_locked(sid, work)
        d = self.locks.take(sid)
        d.addCallback(lambda _: self._run_locked(sid, work))
        return d.addErrback(self.node.background_failure)

    def _run_locked(self, sid: str, work) -> Optional[defer.Deferred]:
        try:
            session = self.store.primary_of(sid)
            result = None if session is None else work(session)
        except Exception:
            self.locks.release(sid)
            self.node.background_failure(Failure())
            return None
        if not isinstance(result, defer.Deferred):
            self.locks.release(sid)
            return None
        if not self.node.sync:
            # async and batched: the lock does not wait for the peer.
            self.locks.release(sid)
            result.addErrback(self.node.background_failure)
            return None
        return result.addBoth(self._release, sid).addErrback(self.node.background_failure)

    def _release(self, result, sid: str):
        self.locks.release(sid)
        return result

    # -- looking for the newest copy ---------------------------------------

    @defer.inlineCallbacks
    def locate(self, sids: List[str], exclude: Tuple[str, ...] = ()):
        """
        Every copy of C{sids} held by the other servers that are not known
        dead: C{({sid: [Copy, ...]}, missing)}, where C{missing} lists
        (server, incarnation) of the servers that might hold a copy and did
        not answer.
        """
        node = self.node
        found: Dict[str, List[Copy]] = {sid: [] for sid in sids}
        asks = []
        missing: List[Tuple[str, int]] = []
        request = wire.split(wire.encode_sids(sids))
        for server, incarnation, state in self._others():
            if server in exclude or state in (NEVER_SEEN, DEAD):
                continue
            if state == NOT_LINKED:
                missing.append((server, incarnation))
                continue
            asks.append(
                node.call(server, "locate", request)
                .addCallback(self._copies, server)
                .addErrback(lambda f, who=(server, incarnation): missing.append(who) or [])
            )
        if asks:
            answers = yield defer.DeferredList(asks, consumeErrors=True)
            for ok, result in answers:
                if not ok:
                    continue
                for copy in result:
                    if copy.sid in found:
                        found[copy.sid].append(copy)
        return found, missing

    def peers_seen(self) -> str:
        """
        How this node sees each other server now, as L{locate} does: the
        incarnation it knows, and whether that one is dead or linked.
        """
        out = []
        for server, incarnation, state in self._others():
            if state == NEVER_SEEN:
                out.append(f"{server}: {state}")
            elif state == DEAD:
                out.append(f"{server}: incarnation {incarnation} {state}")
            else:
                out.append(f"{server}: incarnation {incarnation}, {state}")
        return ", ".join(out)

    def _others(self) -> Iterator[Tuple[str, Optional[int], str]]:
        """
        Each other server, the incarnation this node knows of it, and that
        one's state here: L{NEVER_SEEN}, L{DEAD}, L{LINKED} or L{NOT_LINKED}.
        """
        node = self.node
        for server in node.cluster.node_names:
            if server == node.name:
                continue
            incarnation = self.quorum.incarnation_of(server)
            if incarnation is None:
                yield server, None, NEVER_SEEN
            elif self.quorum.is_dead(server, incarnation):
                yield server, incarnation, DEAD
            else:
                yield server, incarnation, LINKED if node.connected(server) else NOT_LINKED

    @defer.inlineCallbacks
    def settle(self, missing: List[Tuple[str, int]], timeout: float):
        """
        Wait (at most C{timeout}) for a verdict on each server that did
        not answer a look-up; C{True} when all of them are dead.
        """
        if not missing:
            return True
        waits = [self.quorum.await_dead(server, incarnation, timeout) for server, incarnation in missing]
        results = yield defer.gatherResults(waits)
        return all(results)

    def _copies(self, chunks, server: str) -> List[Copy]:
        entries = wire.decode_copies(wire.join(chunks, self.node.limit), self.node.cluster.node_names)
        return [Copy(sid, server, epoch, version, primary, inc) for sid, epoch, version, primary, inc in entries]

    def local_copy(self, sid: str) -> Optional[Copy]:
        s = self.store.get(sid)
        if s is None:
            return None
        return Copy(sid, self.node.name, s.epoch, s.version, s.primary, s.primary_inc)

    # -- orphans: backups of a primary voted dead --------------------------

    def watch(self, peer: str) -> None:
        """
        The link to C{peer} is down: while this node backs sessions of its
        last known incarnation, ask for a verdict each heartbeat; once it is
        voted dead, its sessions are promoted (L{promote_orphans}).
        """
        incarnation = self.quorum.incarnation_of(peer)
        if incarnation is None or self._watching.get(peer) == incarnation:
            return
        if not self.store.has_orphans(peer, incarnation):
            return
        self._watching[peer] = incarnation

        def done(dead):
            if self._watching.get(peer) == incarnation:
                del self._watching[peer]
            return dead

        self.quorum.await_dead(peer, incarnation, None).addBoth(done).addErrback(self.node.background_failure)

    @defer.inlineCallbacks
    def promote_orphans(self, peer: str, incarnation: int):
        """
        Become primary of the backups held here whose primary was C{peer} at
        C{incarnation} (voted dead), unless another server holds a newer
        copy: then ours is stale and goes.  Asks again each heartbeat while
        a server that may hold a newer copy does not answer.  Each round
        first looks every orphan up (L{LOCATE_PART} at a time), then
        promotes them in L{slices}, a slice's full states leaving for the
        new secondaries together; a request that takes one of them over
        meanwhile uses that look-up too (L{located}) rather than waiting
        for one of its own behind the job's on a busy peer.
        """
        node = self.node
        promoted = dropped = 0
        while True:
            if not self.quorum.may_serve():
                yield node.sleep()
                continue
            orphans = self.store.orphans(peer, incarnation)
            if not orphans:
                break
            # The peer is asked too: a new incarnation of it may hold a
            # copy as new as ours (it promotes its own orphans); its dead
            # one is skipped by locate.
            known = self.quorum.incarnation_of(peer)
            found = yield self._locate_all([s.sid for s in orphans])
            if found is None:
                continue
            self._located[peer] = (incarnation, known, found)
            try:
                parts = yield self.slices(
                    orphans,
                    lambda part: defer.gatherResults(
                        [self._promote_one(s.sid, peer, incarnation, found[s.sid], known) for s in part],
                        consumeErrors=True,
                    ),
                    self.quorum.may_serve,
                )
            finally:
                if self._located.get(peer, (None, None, None))[2] is found:
                    del self._located[peer]
            outcomes = [o for part in parts for o in (part or ["again"])]
            promoted += outcomes.count("promoted")
            dropped += outcomes.count("dropped")
            if "again" not in outcomes:
                break
        if promoted or dropped:
            log.info(
                "{peer} (incarnation {incarnation}) is dead: promoted {promoted} of its sessions backed here"
                " ({dropped} stale copies dropped)",
                peer=peer, incarnation=incarnation, promoted=promoted, dropped=dropped,
            )
        return promoted

    @defer.inlineCallbacks
    def _locate_all(self, sids: List[str]):
        """
        L{locate} C{sids}, L{LOCATE_PART} at a time, L{WINDOW} parts under
        way: C{{sid: [Copy, ...]}}, or C{None} once a server that may hold
        a copy did not answer (after waiting, a bounded while, for a
        verdict on it).
        """
        found: Dict[str, List[Copy]] = {}
        missing: List[Tuple[str, int]] = []

        def part(sids):
            def got(result):
                found.update(result[0])
                missing.extend(result[1])

            return self.locate(sids).addCallback(got)

        yield self.slices(sids, part, lambda: not missing, LOCATE_PART)
        if missing:
            yield self.settle(sorted(set(missing)), self.node.settings.takeover_wait)
            return None
        return found

    def located(self, session: Session) -> Optional[List[Copy]]:
        """
        The other servers' copies of C{session} (a backup here) as the
        promotion of its dead primary's sessions found them, or C{None}
        when no promotion under way looked it up.
        """
        run = self._located.get(session.primary)
        if run is None:
            return None
        incarnation, known, found = run
        copies = found.get(session.sid)
        if copies is None or session.primary_inc > incarnation or self.quorum.incarnation_of(session.primary) != known:
            return None
        return list(copies)

    def _promote_one(self, sid: str, peer: str, incarnation: int, others: List[Copy], known: Optional[int]) -> defer.Deferred:
        """
        Promote our copy of C{sid} under its lock, or say why not; fires
        with the outcome.  Without a Deferred of its own while the lock is
        free (a mass promotion runs a hundred thousand of these).
        """
        if self.locks.try_take(sid):
            return self._promote_locked(sid, peer, incarnation, others, known)

        def not_taken(failure):
            failure.trap(Busy, NotServing)
            if failure.check(Busy):
                return "busy"
            # The node stops, or starts a new incarnation, while this one
            # waits for the session: the next round looks again.
            return "stopped" if self.node.stopped else "again"

        return self.locks.take(sid).addCallbacks(
            lambda _: self._promote_locked(sid, peer, incarnation, others, known), not_taken
        )

    def _promote_locked(self, sid: str, peer: str, incarnation: int, others: List[Copy], known: Optional[int]) -> defer.Deferred:
        try:
            outcome = self._promotion(sid, peer, incarnation, others, known)
            if isinstance(outcome, str):
                self.locks.release(sid)
                return defer.succeed(outcome)
            d = self.protect(outcome, exclude=(peer,), bulk=True)
        except Exception:
            self.locks.release(sid)
            return defer.fail()
        d.addErrback(lambda f: f.trap(Unprotected, Fenced, PeerUnavailable))
        return d.addBoth(self._release, sid).addCallback(lambda _: "promoted")

    def _promotion(self, sid: str, peer: str, incarnation: int, others: List[Copy], known: Optional[int]):
        """
        Under the lock: our copy of C{sid} promoted (the session, to
        protect), or the outcome that says why not.
        """
        if self.quorum.incarnation_of(peer) != known:
            return "again"  # a new incarnation of it logged in since the look-up: ask it too
        local = self.store.get(sid)
        if local is None or local.primary != peer or local.primary_inc > incarnation:
            return "moved"
        if any(c.epoch == GONE for c in others):
            # Its id was rotated away: the old id is never served again.
            self.store.drop(sid)
            return "dropped"
        mine = self.local_copy(sid)
        best = newest(others + [mine])
        if best is not mine and (best.epoch, best.version) > (mine.epoch, mine.version):
            self.store.drop(sid)
            return "dropped"
        if best is not mine:
            return "theirs"
        floor = max(c.epoch for c in others + [mine])
        return self.store.promote(sid, None, self.node.now(), floor)

    # -- digests -----------------------------------------------------------

    @defer.inlineCallbacks
    def resync(self, peer: str):
        """
        Send C{peer} our digest of the sessions it backs, a part at a time
        (L{DIGEST_PART} entries or so, each answered with the sids that
        differ), then, in the background, the full state of each of those,
        L{SLICE} at a time.  Fires, once the digest is through, with how
        many are resent.
        """
        node = self.node
        store = self.store
        differ: List[str] = []
        for prefixes in wire.digest_parts(store.digest_sizes(peer), DIGEST_PART):
            entries = store.digest(peer, prefixes)
            try:
                answer = yield node.call(peer, "digest", wire.split(wire.encode_digest(entries)), prefixes)
                differ.extend(decode_sids(wire.join(answer, node.limit)))
            except (PeerUnavailable, wire.WireError) as e:
                log.info("digest with {peer} failed: {why}", peer=peer, why=type(e).__name__)
                break
        resend = []
        for sid in differ:
            session = store.primary_of(sid)
            if session is not None and session.secondary == peer:
                resend.append(sid)
        if resend:
            self.resyncs += 1
            log.info("resyncing {n} sessions on {peer}", n=len(resend), peer=peer)
            self._resend(peer, resend).addErrback(node.background_failure)
        return len(resend)

    def _resend(self, peer: str, sids: List[str]) -> defer.Deferred:
        """
        The full state of C{sids} to C{peer}, each under its lock.
        """
        node = self.node
        return self.in_slices(
            sids,
            lambda s: self.deliver(peer, s.full(node.now()), bulk=True) if s.secondary == peer else None,
            lambda: node.connected(peer),
        )

    def in_slices(self, sids: List[str], work, go_on=lambda: True) -> defer.Deferred:
        """
        Run C{work(session)} (see L{locked}) on each of C{sids}, in
        L{slices}: in sync mode a slice is done once acknowledged, so that
        a mass re-protection or resync neither stalls the requests in
        flight nor queues a million records at once.  Stops early once
        C{go_on()} is false.
        """
        def run(part):
            waits = [self.locked(sid, work) for sid in part]
            return defer.DeferredList([d for d in waits if d is not None])

        return self.slices(sids, run, go_on).addCallback(lambda _: None)

    def slices(
        self, items: list, run, go_on, size: Optional[int] = None, window: Optional[int] = None
    ) -> defer.Deferred:
        """
        C{run(part)} (a Deferred) on each C{size} (L{SLICE}) of C{items}, C{window}
        (L{WINDOW}) parts under way at once and the reactor free after each; a part
        that would start once C{go_on()} is false, or the node stopped, is
        skipped.  Fires, once every part is done or skipped, with the
        results of the parts in order (C{None} for those skipped), or with
        the first failure to happen.

        The next part starts from the clock, never inside the answer of
        the one before: a chain of answers would recurse once per part
        (1,200 parts for 120,000 sessions) when a link that drops fails or
        skips every part left at once.
        """
        node = self.node
        size = size or SLICE
        window = window or WINDOW
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        results: list = [None] * len(parts)
        failures: List[Failure] = []
        done = defer.Deferred()
        state = {"next": 0, "running": 0, "scheduled": False}

        def finish_if_done() -> None:
            if state["next"] == len(parts) and not state["running"] and not done.called:
                if failures:
                    done.errback(failures[0])
                else:
                    done.callback(results)

        def start() -> None:
            state["scheduled"] = False
            # Slots freed by a part that answers at once are for the next
            # turn: the reactor runs between parts.
            free = window - state["running"]
            while free > 0 and state["next"] < len(parts):
                i = state["next"]
                state["next"] += 1
                if node.stopped or not go_on():
                    continue
                free -= 1
                state["running"] += 1
                defer.maybeDeferred(run, parts[i]).addBoth(finished, i)
            finish_if_done()

        def finished(result, i: int) -> None:
            state["running"] -= 1
            if isinstance(result, Failure):
                failures.append(result)
            else:
                results[i] = result
            if state["next"] < len(parts):
                if not state["scheduled"]:
                    state["scheduled"] = True
                    node.clock.callLater(0, start)
            else:
                finish_if_done()

        start()
        return done
