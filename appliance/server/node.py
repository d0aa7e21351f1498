"""
A session server's sessions on the request path: open one for a request
(taking it over when this node does not own it), commit what the request
changed, replicate it, and answer only once that is safe.

Who may serve is L{appliance.core.membership}'s rule, carried by
L{appliance.server.quorum.Quorum}: a node serves only while it holds its
lease, and takes a session over from a backup copy only once the session's
primary is voted dead and no other server holds a newer copy.  Keeping
copies protected (delivery outcomes, re-protection, promotion, digests) is
L{appliance.server.protection}; the per-session locks are
L{appliance.server.locks}.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from attrs import define, field
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from appliance import cookie
from appliance.config import ClusterConfig
from appliance.core.rebalance import Moved
from appliance.core.session import Full, Session, SessionData
from appliance.core.store import GONE, SWEEP, Fenced, Record, Result, Store, place_secondary
from appliance.logs import Tally
from appliance.replication import wire
from appliance.replication.link import PeerUnavailable
from appliance.replication.peer import IReplicationHandler, NoSuchSession, NotNow, PrimaryAlive, decode_hand_over
from appliance.server.drain import Leaving
from appliance.server.errors import NotServing, TooManySessions, Unprotected
from appliance.server.locks import Busy, SessionLocks
from appliance.server.protection import Protection, newest
from appliance.server.quorum import Quorum

log = Logger()


@define
class Handle:
    """
    One request's hold on a session.  C{session} is C{None} until the
    request writes something (no session is created for pure reads);
    C{locked} is the sid whose lock the request holds, and C{renamed} the
    one it had before the request rotated it (whose lock it holds too).
    """

    data: SessionData
    session: Optional[Session] = None
    waits: List[defer.Deferred] = field(factory=list)
    locked: Optional[str] = None
    renamed: Optional[str] = None


@define
class Outcome:
    """
    What the response must say: the cookie value to set (C{None}: leave
    the client's cookie alone), or that the session ended.
    """

    cookie: Optional[str] = None
    ended: bool = False


@implementer(IReplicationHandler)
class SessionNode:
    #: Entries of the expiry wheel one reactor turn looks at, at most.
    sweep = SWEEP

    def __init__(
        self,
        clock,
        cluster: ClusterConfig,
        name: str,
        now: Callable[[], float],
        call: Callable[..., defer.Deferred],
        connected: Callable[[str], bool],
        peer_load: Callable[[str], int],
        send: Callable[[str, Record], defer.Deferred],
        quorum: Quorum,
    ):
        """
        C{now} is a monotonic clock for expiry; C{call(peer, method, *args)}
        calls a peer; C{connected(peer)} says whether its link is up;
        C{send(peer, record)} queues a record through the replicator.
        """
        self.clock = clock
        self.cluster = cluster
        self.settings = cluster.cluster
        self.me = cluster.node(name)
        self.name = name
        #: The node names records and cookies may name (a reload changes it).
        self.names = frozenset(cluster.node_names)
        self.now = now
        self.call = call
        self.connected = connected
        self.peer_load = peer_load
        self.send = send
        self.quorum = quorum
        self.store = Store(
            name, self.settings.session_timeout, self.settings.max_session_bytes, self.settings.metrics
        )
        self.store.incarnation = quorum.incarnation
        self.peers = [n for n in cluster.nodes if n.name != name]
        self.limit = self.settings.max_session_bytes + 2 * wire.CHUNK
        self.locks = SessionLocks(clock, self.settings.lock_wait)
        # Sessions change hands one request at a time: one line per burst.
        self.promoted = Tally(clock, log, "promoted {n} sessions backed here on request: their primary {primary} is gone")
        self.taken = Tally(clock, log, "took {n} sessions over from {source}")
        self.handed = Tally(clock, log, "handed {n} sessions over to {peer}")
        self.rotated = Tally(clock, log, "rotated the ids of {n} sessions")
        self.fenced = Tally(clock, log, "{peer} fenced {n} sessions: dropped our copies", LogLevel.warn)
        self.rivals = Tally(clock, log, "{peer} holds {n} sessions from another primary: ours serve them no more", LogLevel.warn)
        self.protection = Protection(self)
        self.touched: dict = {}
        self.sync = self.settings.replication == "sync"
        self.stopped = False
        #: Set by L{appliance.server.drain.Drain}: serve only what is ours.
        self.draining = False
        self.leaving = Leaving(self)
        #: Sessions handed to another node lately (see L{Moved}).
        self.moved = Moved(self.settings.session_timeout)
        #: Sessions taken over by a request, by the copy they came from.
        self.takeovers = {"primary": 0, "secondary": 0}
        #: What an operator's request to drain does (the service stops).
        self.on_drain_request: Callable[[], None] = lambda: None
        self._sleeps: set = set()
        quorum.on_dead = self.dead

    def sleep(self) -> defer.Deferred:
        """
        One heartbeat's pause in background work; fails with L{NotServing}
        once the node stops.
        """
        if self.stopped:
            return defer.fail(NotServing("stopped"))
        d = task.deferLater(self.clock, self.quorum.interval, lambda: None)
        self._sleeps.add(d)
        return d.addBoth(self._woke, d)

    def _woke(self, result, d):
        self._sleeps.discard(d)
        if self.stopped:
            raise NotServing("stopped")
        return result

    def stop(self) -> None:
        """
        The node stops: waiters are answered and background work ends.
        """
        self.stopped = True
        for tally in (self.promoted, self.taken, self.handed, self.rotated, self.fenced, self.rivals):
            tally.flush()
        self.quorum.stop()
        self.locks.fail_all(NotServing("this node is stopping"))
        for d in list(self._sleeps):
            d.cancel()

    # -- placement ---------------------------------------------------------

    def may_place(self, peer: str) -> bool:
        """
        Whether C{peer} may get a copy: its link is up and it is not
        draining.
        """
        return self.connected(peer) and not self.leaving.draining(peer)

    def pick_secondary(self, exclude: tuple = ()) -> Optional[str]:
        live = [n for n in self.peers if n.name not in exclude and self.may_place(n.name)]
        load = {n.name: self.peer_load(n.name) for n in live}
        return place_secondary(self.me, live, load, self.me.secondary)

    # -- the request path --------------------------------------------------

    def open(self, route: cookie.Route) -> defer.Deferred:
        """
        The session a request with this cookie route works on, locked for
        the request; L{close} (or L{abandon}) releases it.  Fails with
        L{NotServing} when this node may not serve it now.
        """
        if not self.quorum.may_serve():
            return defer.fail(NotServing("this node does not hold its lease"))
        sid = route.sid
        if sid is None:
            if self.draining:
                return defer.fail(NotServing("this node is draining"))
            return defer.succeed(Handle(self._data(None)))
        local = self.store.get(sid)
        if (
            local is not None
            and self.store.mine(local)
            # A single-node cluster's sessions have no secondary to find.
            and (local.secondary is not None or not self.peers)
            and self.locks.try_take(sid)
        ):
            return defer.succeed(Handle(self._data(local), local, locked=sid))
        return self._open(sid, route)

    def _data(self, session: Optional[Session]) -> SessionData:
        if session is None:
            return SessionData(default_timeout=self.store.timeout)
        return SessionData(session.values, session.timeout, self.store.timeout)

    @defer.inlineCallbacks
    def _open(self, sid: str, route: cookie.Route):
        try:
            yield self.locks.take(sid)
        except Busy:
            raise NotServing("the session is busy")
        try:
            session, waits = yield self._acquire(sid, route)
        except BaseException:
            self.locks.release(sid)
            raise
        if session is None:
            self.locks.release(sid)
            return Handle(self._data(None))
        return Handle(self._data(session), session, waits, locked=sid)

    @defer.inlineCallbacks
    def _acquire(self, sid: str, route: cookie.Route):
        """
        Under the session's lock: the session to serve and what the
        response must wait for (its protection on a secondary), taking it
        over when another node holds it; C{(None, [])} when nobody does.
        """
        protection = self.protection
        for _ in range(3):
            if self.store.gone(sid):
                return None, []
            local = self.store.get(sid)
            if local is not None and self.store.mine(local):
                if local.secondary is None:
                    try:
                        yield protection.protect(local)
                    except (Unprotected, Fenced):
                        raise NotServing(f"no second copy of {sid} can be made now")
                return local, []
            if self.draining:
                # Its owner is elsewhere now (or will be): the balancer
                # sends the request on.
                raise NotServing("this node is draining")
            if (
                local is not None
                and local.primary != self.name
                and route.primary == self.name
                and route.secondary == local.primary
                and self.moved.recent(sid, self.now())
                and not self.quorum.is_dead(local.primary, local.primary_inc)
            ):
                # Handed to its secondary, which serves it and which the
                # cookie names: the balancer goes there next, and the
                # answer carries the new cookie.
                raise NotServing(f"{sid} moved to {local.primary}")
            # The promotion of its dead primary's sessions may have looked
            # it up already (after the verdict, as this would).
            copies = None if local is None else protection.located(local)
            if copies is None:
                found, missing = yield protection.locate([sid])
                copies = found[sid]
            else:
                missing = []
            if any(c.epoch == GONE for c in copies):
                # Rotated away: never served again, even from a copy here.
                self.store.drop(sid)
                return None, []
            mine = protection.local_copy(sid)
            if mine is not None:
                copies.append(mine)
            if not copies:
                if missing:
                    # A server that did not answer may hold it.
                    settled = yield protection.settle(missing, self.settings.takeover_wait)
                    if not settled:
                        raise NotServing("a server that may hold this session does not answer")
                    continue
                # Expired, or lost: the request gets a new session.  Who was
                # asked is what tells the two apart afterwards.
                log.info("no server holds {sid} (the cookie's route {route}; {peers}): a new session",
                         sid=sid, route=f"{route.primary}!{route.secondary}", peers=protection.peers_seen())
                return None, []
            best = newest(copies)
            if best.holder == best.primary and best.holder != self.name:
                # Its primary holds the newest copy.  (An older copy that
                # names its holder primary is an orphan of an incarnation
                # that a newer epoch replaced: never the source.)
                source, dead = best, None
            else:
                # The newest copy names us its primary, and we hold nothing:
                # a hand-over to us whose answer never came.  We take it
                # again (from its holder, which allows the session's named
                # primary to).
                named_us = best.primary == self.name and best.primary_inc == self.store.incarnation
                if not named_us and not self.quorum.is_dead(best.primary, best.primary_inc):
                    dead = yield self.quorum.await_dead(best.primary, best.primary_inc, self.settings.takeover_wait)
                    if not dead:
                        raise NotServing(f"{best.primary} holds {sid} and is not known dead")
                    continue
                if missing:
                    settled = yield protection.settle(missing, self.settings.takeover_wait)
                    if not settled:
                        raise NotServing("a server that may hold a newer copy does not answer")
                    continue
                if best.holder == self.name:
                    floor = max(c.epoch for c in copies)
                    session = self.store.promote(sid, None, self.now(), floor)
                    self.promoted.add(primary=best.primary)
                    return session, [protection.protect(session, exclude=(best.primary,))]
                source, dead = best, None if named_us else best.primary_inc
            try:
                chunks = yield self.call(source.holder, "hand_over", sid, -1 if dead is None else dead)
                full = decode_hand_over(chunks, self.names, self.limit)
            except (NoSuchSession, PrimaryAlive):
                continue
            except (NotNow, PeerUnavailable, wire.WireError) as e:
                raise NotServing(f"{source.holder} could not hand {sid} over: {type(e).__name__}")
            if full.sid != sid:
                raise NotServing(f"{source.holder} answered for another session")
            return self._adopted(full, source.holder, source.holder == source.primary)
        raise NotServing(f"{sid} kept moving")

    def _adopted(self, full: Full, source: str, from_primary: bool):
        keep = full.secondary
        if keep is None or keep == self.name or not self.connected(keep):
            keep = self.pick_secondary()
        session = self.store.adopt(full, keep, self.now())
        self.taken.add(source=source)
        self.takeovers["primary" if from_primary else "secondary"] += 1
        return session, [self.protection.protect(session)]

    def abandon(self, handle: Handle) -> None:
        """
        The request ended without a response (its client left): release
        the session without committing anything.
        """
        self._release(handle)

    def _release(self, handle: Handle) -> None:
        for sid in (handle.locked, handle.renamed):
            if sid is not None:
                self.locks.release(sid)
        handle.locked = handle.renamed = None

    def close(self, handle: Handle, now: Optional[float] = None) -> defer.Deferred:
        """
        Commit what the request did and replicate it; fires with an
        L{Outcome} when the response may leave (in sync mode, after the
        secondary acknowledged), and only then releases the session.  Fails
        with L{Fenced} if the write was refused, L{Unprotected} when no
        second copy could be made, L{NotServing}, L{TooLarge}, L{NotJSON}
        or L{TooManySessions}.
        """
        now = self.now() if now is None else now
        try:
            outcome = self._commit(handle, now)
        except Exception:
            self._release(handle)
            return defer.fail()
        waits = handle.waits
        if not self.sync or not waits:
            self._release(handle)
            for d in waits:
                d.addErrback(self.background_failure)
            return defer.succeed(self._final(handle, outcome))
        if len(waits) == 1:
            done = waits[0]
        else:
            done = defer.gatherResults(waits, consumeErrors=True)
            done.addErrback(lambda f: f.value.subFailure)

        def released(result):
            self._release(handle)
            return result

        return done.addBoth(released).addCallback(lambda _: self._final(handle, outcome))

    def _final(self, handle: Handle, outcome: Outcome) -> Outcome:
        session = handle.session
        if outcome.ended or session is None:
            return outcome
        if self.store.get(session.sid) is not session:
            raise Fenced(session.sid)
        return Outcome(cookie.encode(session.sid, session.primary, session.secondary))

    def _commit(self, handle: Handle, now: float) -> Outcome:
        data, session = handle.data, handle.session
        deliver = self.protection.deliver
        if data.invalidated:
            if session is not None:
                removal = self.store.remove(session.sid)
                if session.secondary is not None and removal is not None:
                    handle.waits.append(deliver(session.secondary, removal))
            return Outcome(ended=True)
        changes = data.changes()
        if session is None:
            if not changes:
                return Outcome()
            if self.store.primaries >= self.settings.max_sessions:
                raise TooManySessions(self.settings.max_sessions)
            secondary = self.pick_secondary()
            if secondary is None and not self.quorum.alone():
                raise NotServing("no secondary is reachable for a new session")
            sid = cookie.new_sid()
            full = self.store.create(sid, changes, secondary, now)
            handle.session = self.store.get(sid)
            if secondary is not None:
                handle.waits.append(deliver(secondary, full))
            return Outcome()
        if data.rotated:
            # A change refused as too large must not have rotated the id.
            self.store.size_after(session, changes)
            self._rotate(handle, now)
        delta = self.store.commit(session, changes, now)
        if session.secondary is None:
            if self.peers:
                handle.waits.append(self.protection.protect(session))
        elif delta is not None:
            handle.waits.append(deliver(session.secondary, delta))
        elif not handle.waits:
            self.touched.setdefault(session.secondary, set()).add(session.sid)
        return Outcome()

    def _rotate(self, handle: Handle, now: float) -> None:
        """
        Give the session a new id, holding the new id's lock too; the
        rotation goes to the secondary before the request's changes, which
        are made under the new id.
        """
        session = handle.session
        old, new = session.sid, cookie.new_sid()
        rotation = self.store.rotate(session, new, now)
        self.locks.try_take(new)
        handle.locked, handle.renamed = new, old
        if session.secondary is not None:
            handle.waits.append(self.protection.deliver(session.secondary, rotation))
        self.rotated.add()

    def background_failure(self, failure) -> None:
        if not failure.check(Fenced, PeerUnavailable, Unprotected, NotServing, Busy):
            log.failure("background replication failed", failure)

    # -- link and membership events ----------------------------------------

    def peer_down(self, peer: str) -> None:
        """
        The link to C{peer} is gone.  In eager mode our primaries it backed
        are re-protected elsewhere at once; its sessions backed here wait
        for a verdict of its death before they are promoted.
        """
        if self.settings.reprotect == "eager":
            self.reprotect_all(peer)
        self.protection.watch(peer)

    def reprotect_all(self, peer: str) -> None:
        """
        Give every primary that C{peer} backed another secondary (one run
        per peer at a time: a link that flaps starts no second one).
        """

        def start() -> defer.Deferred:
            sids = [s.sid for s in self.store.backed_by(peer)]
            if sids:
                log.info("{peer} lost: re-protecting {n} sessions", peer=peer, n=len(sids))
            return self.protection.in_slices(
                sids, lambda s: self.protection.protect(s, exclude=(peer,), bulk=True) if s.secondary == peer else None
            )

        self.protection.once(("reprotect", peer), start)

    def dead(self, peer: str, incarnation: int) -> None:
        """
        C{peer} at C{incarnation} is voted dead (or restarted): promote its
        sessions backed here (one promotion per incarnation at a time).
        """
        if self.store.has_orphans(peer, incarnation):
            self.protection.once(("promote", peer, incarnation), lambda: self.protection.promote_orphans(peer, incarnation))

    def peer_up(self, peer: str) -> defer.Deferred:
        """
        A link came up: compare digests before it carries deltas again, and
        (eagerly) protect sessions that have no secondary.
        """
        d = self.protection.resync(peer)
        if self.settings.reprotect == "eager":
            self.protection.in_slices(
                [s.sid for s in self.store.backed_by(None)],
                lambda s: self.protection.protect(s, bulk=True) if s.secondary is None else None,
            ).addErrback(self.background_failure)
        return d

    def resync(self, peer: str) -> defer.Deferred:
        return self.protection.resync(peer)

    def periodic_resync(self, peer: str) -> Optional[defer.Deferred]:
        """
        The periodic digest exchange with C{peer}, skipped (C{None}) while a
        mass re-protection or promotion runs: that job is making the copies
        a digest would find missing, and the ones it has in flight would
        only be sent twice.  The next period compares again.
        """
        if self.protection.busy:
            return None
        return self.protection.resync(peer)

    def reset(self, incarnation: int) -> int:
        """
        Start again as a new incarnation.  The sessions this node was
        primary of may have been taken over while it could not tell, so
        they are served no more as they are: they become orphans of the
        old incarnation, promoted again like any backup of a dead primary
        (only where no newer copy exists).  Returns how many copies that
        makes.
        """
        old = self.store.incarnation
        orphans = self.store.primaries
        self.store.incarnation = incarnation
        self.locks.fail_all(NotServing("this node restarted its incarnation"))
        self.touched = {}
        self.dead(self.name, old)
        return orphans

    # -- periodic work -----------------------------------------------------

    def send_touches(self) -> None:
        """
        Tell secondaries which of their sessions were read, in one cheap
        record each, so a read-only session does not expire on its backup.
        """
        touched, self.touched = self.touched, {}
        for peer, sids in touched.items():
            for sid in sids:
                session = self.store.primary_of(sid)
                if session is not None and session.secondary == peer:
                    self.send(peer, self.store.touch(session, session.last_access)).addErrback(self.background_failure)

    def expire(self) -> List[str]:
        """
        Remove the sessions idle past their timeout, a slice at a time: a
        sweep that finds more than a slice due goes on in the next reactor
        turn instead of holding this one.
        """
        now = self.now()
        gone = self.store.expired(now, self.sweep)
        if self.store.expiry_due(now) and not self.stopped:
            self.clock.callLater(0, self.expire)
        return gone

    # -- IReplicationHandler -----------------------------------------------

    def peer_seen(self, peer: str, incarnation: int) -> None:
        self.quorum.seen(peer, incarnation)

    def received(self, peer: str, incarnation: int, records) -> List[Result]:
        if self.quorum.is_dead(peer, incarnation):
            return [Result.FENCED] * len(records)
        now = self.now()
        apply = self.store.apply
        return [apply(r, now, incarnation) for r in records]

    @defer.inlineCallbacks
    def hand_over(self, peer: str, incarnation: int, sid: str, dead: int):
        """
        C{peer} takes C{sid} over.  A primary hands over while it holds its
        lease; a backup only once its primary is known dead (C{dead} is the
        incarnation of it the requester found voted dead, or -1).
        """
        try:
            yield self.locks.take(sid)
        except Busy:
            raise NotNow("the session is busy")
        try:
            if not self.quorum.may_serve():
                raise NotNow("this node does not hold its lease")
            local = self.store.get(sid)
            if local is None:
                return None
            named = local.primary == peer and local.primary_inc == incarnation
            if not self.store.mine(local) and not named:
                if dead >= local.primary_inc:
                    self.quorum.known_dead(local.primary, dead)
                if not self.quorum.is_dead(local.primary, local.primary_inc):
                    raise PrimaryAlive(local.primary)
            full = self.store.hand_over(sid, peer, self.now(), incarnation)
            self.handed.add(peer=peer)
            return full
        finally:
            self.locks.release(sid)

    def locate(self, sids: List[str]):
        return self.store.copies(sids)

    def take(self, peer: str, incarnation: int, records):
        return self.leaving.take(peer, incarnation, records)

    def drain_requested(self, peer: str) -> None:
        self.on_drain_request()

    def peer_leaving(self, peer: str, incarnation: int):
        return self.leaving.leaving(peer, incarnation)

    def digest_received(self, peer: str, incarnation: int, entries, prefixes=None) -> List[str]:
        return self.store.compare(peer, entries, incarnation, prefixes)

    def load(self) -> int:
        return len(self.store)

    def counts(self):
        if self.draining or self.stopped or not self.quorum.may_serve():
            return None
        return [self.store.primaries, self.store.backups]

    def vote(self, server: str, incarnation: int) -> defer.Deferred:
        return self.quorum.vote(server, incarnation)

    def renew(self, peer: str, incarnation: int, held: bool = True):
        answer = self.quorum.membership.voter.renew(peer, incarnation, self.now(), held)
        return int(answer), len(self.store), self.quorum.incarnation
