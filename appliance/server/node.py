"""
A session server's sessions: open one for a request (taking it over when
this node does not own it), commit what the request changed, replicate it,
and keep every primary copy protected by a live secondary.

The decisions come from L{appliance.core.store}; this module sequences them
with the PB links and the replicator.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from attrs import define, field
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from appliance import cookie
from appliance.config import ClusterConfig
from appliance.core.session import Full, Session, SessionData
from appliance.core.store import Fenced, Record, Result, Store, place_secondary
from appliance.replication import wire
from appliance.replication.link import PeerUnavailable
from appliance.replication.peer import IReplicationHandler, decode_hand_over, decode_sids

log = Logger()


class TooManySessions(Exception):
    """
    This node is primary of C{max_sessions} sessions: it creates no new one
    until some end.
    """


@define
class Handle:
    """
    One request's hold on a session.  C{session} is C{None} until the
    request writes something (no session is created for pure reads).
    """

    data: SessionData
    session: Optional[Session] = None
    waits: List[defer.Deferred] = field(factory=list)


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
        self.now = now
        self.call = call
        self.connected = connected
        self.peer_load = peer_load
        self._send = send
        self.store = Store(name, self.settings.session_timeout, self.settings.max_session_bytes)
        self.peers = [n for n in cluster.nodes if n.name != name]
        self.limit = self.settings.max_session_bytes + 2 * wire.CHUNK
        self._locks: Dict[str, List[defer.Deferred]] = {}
        self.touched: Dict[str, set] = {}
        self._primaries = 0
        self._counted_at: Optional[float] = None

    # -- locks: writes on one session are serialised on its primary --------

    def _lock(self, sid: str) -> defer.Deferred:
        waiters = self._locks.get(sid)
        if waiters is None:
            self._locks[sid] = []
            return defer.succeed(None)
        d = defer.Deferred()
        waiters.append(d)
        return d

    def _unlock(self, sid: str) -> None:
        waiters = self._locks.get(sid)
        if waiters is None:
            return
        if waiters:
            waiters.pop(0).callback(None)
        else:
            del self._locks[sid]

    # -- placement ---------------------------------------------------------

    def pick_secondary(self, exclude: tuple = ()) -> Optional[str]:
        live = [n for n in self.peers if n.name not in exclude and self.connected(n.name)]
        load = {n.name: self.peer_load(n.name) for n in live}
        return place_secondary(self.me, live, load, self.me.secondary)

    # -- the request path --------------------------------------------------

    def open(self, route: cookie.Route) -> defer.Deferred:
        """
        The session a request with this cookie route works on, locked for
        the request; L{close} releases it.
        """
        sid = route.sid
        if sid is None:
            return defer.succeed(Handle(SessionData()))
        local = self.store.get(sid)
        if local is not None and local.primary == self.name and sid not in self._locks:
            self._locks[sid] = []
            return defer.succeed(Handle(SessionData(local.values), local))
        return self._open(sid, route)

    @defer.inlineCallbacks
    def _open(self, sid: str, route: cookie.Route):
        yield self._lock(sid)
        try:
            session, protected = yield self._resolve(sid, route)
        except BaseException:
            self._unlock(sid)
            raise
        if session is None:
            self._unlock(sid)
            return Handle(SessionData())
        return Handle(SessionData(session.values), session, [] if protected is None else [protected])

    @defer.inlineCallbacks
    def _resolve(self, sid: str, route: cookie.Route):
        """
        The session to serve and the Deferred of its protection on a
        secondary (taken over or promoted here), which the response waits
        for in sync mode; C{(None, None)} when nobody holds it.
        """
        local = self.store.get(sid)
        if local is not None and local.primary == self.name:
            return local, None
        sources = [n for n in (route.primary, route.secondary) if n and n != self.name]
        if local is not None and local.primary not in sources and local.primary != self.name:
            sources.insert(0, local.primary)
        floor = 0
        for source in sources:
            if not self.connected(source):
                continue
            try:
                chunks = yield self.call(source, "hand_over", sid)
                full = decode_hand_over(chunks, self.cluster.node_names, self.limit)
            except Exception as e:
                log.info("{source} could not hand {sid} over: {why}", source=source, sid=sid, why=type(e).__name__)
                continue
            if full.sid != sid:
                continue
            if local is None or full.version >= local.version:
                return self._adopted(full, source)
            floor = full.epoch
            break
        if local is not None:
            session = self.store.promote(sid, self.pick_secondary(), self.now(), floor)
            log.info(
                "promoted {sid} epoch={epoch} secondary={secondary}",
                sid=sid, epoch=session.epoch, secondary=session.secondary,
            )
            return session, self._protect(session).addErrback(self._background_failure)
        return None, None

    def _adopted(self, full: Full, source: str):
        keep = full.secondary
        if keep is None or keep == self.name or not self.connected(keep):
            keep = self.pick_secondary()
        session = self.store.adopt(full, keep, self.now())
        log.info(
            "took {sid} over from {source} epoch={epoch} secondary={secondary}",
            sid=full.sid, source=source, epoch=session.epoch, secondary=keep,
        )
        return session, self._protect(session).addErrback(self._background_failure)

    def _protect(self, session: Session) -> defer.Deferred:
        """
        Send the full state to the session's secondary.
        """
        if session.secondary is None:
            return defer.succeed(None)
        return self._deliver(session.secondary, session.full(self.now()))

    def close(self, handle: Handle, now: Optional[float] = None) -> defer.Deferred:
        """
        Commit what the request did and replicate it; fires with an
        L{Outcome} when the response may leave (in sync mode, after the
        secondary acknowledged).  Fails with L{Fenced} if the write was
        refused, L{TooLarge}, L{NotJSON} or L{TooManySessions}.
        """
        now = self.now() if now is None else now
        session = handle.session
        try:
            outcome = self._commit(handle, now)
        except Exception:
            return defer.fail()
        finally:
            if session is not None:
                self._unlock(session.sid)
        if self.settings.replication != "sync" or not handle.waits:
            for d in handle.waits:
                d.addErrback(lambda f: None)
            return defer.succeed(self._final(handle, outcome))
        if len(handle.waits) == 1:
            done = handle.waits[0]
        else:
            done = defer.gatherResults(handle.waits, consumeErrors=True)
            done.addErrback(lambda f: f.value.subFailure)
        return done.addCallback(lambda _: self._final(handle, outcome))

    def _final(self, handle: Handle, outcome: Outcome) -> Outcome:
        session = handle.session
        if outcome.ended or session is None:
            return outcome
        if self.store.get(session.sid) is not session:
            raise Fenced(session.sid)
        return Outcome(cookie.encode(session.sid, session.primary, session.secondary))

    def _commit(self, handle: Handle, now: float) -> Outcome:
        data, session = handle.data, handle.session
        if data.invalidated:
            if session is not None:
                removal = self.store.remove(session.sid)
                if session.secondary is not None and removal is not None:
                    handle.waits.append(self._deliver(session.secondary, removal))
            return Outcome(ended=True)
        changes = data.changes()
        if session is None:
            if not changes:
                return Outcome()
            if not self._room(now):
                raise TooManySessions(self.settings.max_sessions)
            sid = cookie.new_sid()
            secondary = self.pick_secondary()
            full = self.store.create(sid, changes, secondary, now)
            self._primaries += 1
            handle.session = self.store.get(sid)
            if secondary is not None:
                handle.waits.append(self._deliver(secondary, full))
            return Outcome()
        delta = self.store.commit(session, changes, now)
        if session.secondary is None and self.settings.reprotect == "lazy":
            self.store.set_secondary(session, self.pick_secondary(), now)
            if session.secondary is not None:
                handle.waits.append(self._protect(session))
                return Outcome()
        if delta is not None and session.secondary is not None:
            handle.waits.append(self._deliver(session.secondary, delta))
        elif delta is None and session.secondary is not None:
            self.touched.setdefault(session.secondary, set()).add(session.sid)
        return Outcome()

    def _room(self, now: float) -> bool:
        """
        Whether this node may create one more session.  Counting its
        primaries walks the store, so it is done only once the store holds
        C{max_sessions} copies in all, and then at most once a second;
        sessions created in between are added to the last count.
        """
        limit = self.settings.max_sessions
        if len(self.store) < limit:
            return True
        if self._counted_at is None or now - self._counted_at >= 1.0:
            self._primaries = sum(1 for s in self.store.sessions.values() if s.primary == self.name)
            self._counted_at = now
        return self._primaries < limit

    # -- replication results -----------------------------------------------

    def _deliver(self, peer: str, record: Record) -> defer.Deferred:
        """
        Send C{record} to C{peer} and see it through: a gap is answered with
        the full state, a lost peer by re-protecting on another node, and a
        fence drops our copy and fails with L{Fenced}.
        """
        d = self._send(peer, record)
        d.addCallbacks(self._delivered, self._undelivered, callbackArgs=(peer, record), errbackArgs=(peer, record))
        return d

    def _delivered(self, result: Result, peer: str, record: Record):
        if result.acknowledged:
            return None
        session = self.store.get(record.sid)
        if result is Result.FENCED:
            if self.store.fenced(record.sid, record.epoch):
                log.warn("{peer} fenced {sid} epoch={epoch}: dropped our copy", peer=peer, sid=record.sid, epoch=record.epoch)
            raise Fenced(record.sid)
        if session is None or session.primary != self.name or session.secondary != peer:
            return None
        return self._deliver(peer, session.full(self.now()))

    def _undelivered(self, failure, peer: str, record: Record):
        failure.trap(PeerUnavailable)
        session = self.store.get(record.sid)
        if session is None or session.primary != self.name:
            return None
        if session.secondary != peer:
            return None
        return self._reprotect(session, exclude=(peer,))

    def _reprotect(self, session: Session, exclude: tuple = ()) -> defer.Deferred:
        secondary = self.pick_secondary(exclude)
        self.store.set_secondary(session, secondary, self.now())
        return self._protect(session)

    # -- link events -------------------------------------------------------

    def peer_down(self, peer: str) -> defer.Deferred:
        """
        The link to C{peer} is gone.  Its backups here are promoted (once the
        other nodes agree it is gone), so that a session whose primary died
        is not left with one copy until its next request; in eager mode our
        own primaries it backed are re-protected elsewhere.
        """
        d = self.promote_orphans(peer)
        if self.settings.reprotect != "eager":
            return d
        sessions = self.store.backed_by(peer)
        for session in sessions:
            self._reprotect(session, exclude=(peer,)).addErrback(self._background_failure)
        if sessions:
            log.info(
                "{peer} lost: re-protected {n} sessions ({unprotected} without a secondary)",
                peer=peer, n=len(sessions), unprotected=sum(1 for s in sessions if s.secondary is None),
            )
        return d

    @defer.inlineCallbacks
    def promote_orphans(self, peer: str):
        """
        Become primary of every session this node backs for C{peer}, once no
        other live node reaches C{peer} either.  A node that still reaches it
        may simply not have noticed the death yet, so ask again each
        heartbeat for as long as a dead peer takes to be noticed; if it is
        still reachable from there, it is a partition between the two of us
        and the primary goes on serving.
        """
        for attempt in range(self.settings.heartbeat_misses + 2):
            if attempt:
                yield task.deferLater(self.clock, self.settings.heartbeat_interval, lambda: None)
            if self.connected(peer) or not self._orphans(peer):
                return 0
            seen_by = yield self._seen_by(peer)
            if seen_by is None:
                break
        else:
            log.info("{peer} unreachable from here but not from {other}: not promoting", peer=peer, other=seen_by)
            return 0
        now = self.now()
        orphans = self._orphans(peer)
        for session in orphans:
            self.store.promote(session.sid, self.pick_secondary(exclude=(peer,)), now)
            self._protect(session).addErrback(self._background_failure)
        log.info("{peer} is gone: promoted {n} of its sessions backed here", peer=peer, n=len(orphans))
        return len(orphans)

    def _orphans(self, peer: str) -> List[Session]:
        return [s for s in self.store.sessions.values() if s.primary == peer and s.secondary == self.name]

    @defer.inlineCallbacks
    def _seen_by(self, peer: str):
        """
        The name of a live node whose link to C{peer} is up, or C{None}.
        """
        for other in self.peers:
            if other.name == peer or not self.connected(other.name):
                continue
            try:
                sees = yield self.call(other.name, "sees", peer)
            except Exception:
                continue
            if sees is True:
                return other.name
        return None

    def peer_up(self, peer: str) -> defer.Deferred:
        """
        A link came up: compare digests before it carries deltas again, and
        (eagerly) protect sessions that have no secondary.
        """
        d = self.resync(peer)
        if self.settings.reprotect == "eager":
            for session in self.store.backed_by(None):
                self._reprotect(session).addErrback(self._background_failure)
        return d

    @defer.inlineCallbacks
    def resync(self, peer: str):
        """
        Send C{peer} our digest of the sessions it backs, and the full state
        of every one it reports different.
        """
        entries = self.store.digest(peer)
        try:
            answer = yield self.call(peer, "digest", wire.split(wire.encode_digest(entries)))
            sids = decode_sids(answer)
        except (PeerUnavailable, wire.WireError) as e:
            log.info("digest with {peer} failed: {why}", peer=peer, why=type(e).__name__)
            return 0
        resent = 0
        for sid in sids:
            session = self.store.primary_of(sid)
            if session is not None and session.secondary == peer:
                self._protect(session).addErrback(self._background_failure)
                resent += 1
        if resent:
            log.info("resynced {n} sessions on {peer}", n=resent, peer=peer)
        return resent

    def _background_failure(self, failure) -> None:
        if not failure.check(Fenced, PeerUnavailable):
            log.failure("background replication failed", failure)

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
                    self._send(peer, self.store.touch(session, session.last_access)).addErrback(lambda f: None)

    def expire(self) -> List[str]:
        gone = self.store.expired(self.now())
        for sid in gone:
            self._locks.pop(sid, None)
        return gone

    # -- IReplicationHandler -----------------------------------------------

    def received(self, peer: str, records) -> List[Result]:
        now = self.now()
        return [self.store.apply(r, now) for r in records]

    def hand_over(self, peer: str, sid: str) -> Optional[Full]:
        full = self.store.hand_over(sid, peer, self.now())
        if full is not None:
            log.info("handed {sid} over to {peer} epoch={epoch}", sid=sid, peer=peer, epoch=full.epoch)
        return full

    def digest_received(self, peer: str, entries) -> List[str]:
        return self.store.compare(peer, entries)

    def load(self) -> int:
        return len(self.store)

    def sees(self, peer: str) -> bool:
        return self.connected(peer)

