"""
The rules of a session on one node: commit on the primary, apply on the
backup, take over, fence, expire, compare digests.

A L{Store} holds every session the node has, as primary or as backup; the
role of a copy is L{Store.mine}: primary here, in this incarnation.  Methods take the time
and return decisions; the PB and HTTP edges carry them out.
"""

from __future__ import annotations

import enum
import heapq
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

from appliance.core.counters import BYTES, Histogram
from appliance.core.expiry import ExpiryWheel
from appliance.core.session import DEFAULT_TIMEOUT, MAX_FORMER, Changes, Delta, Full, Remove, Rotate, Session, Touch

Record = Union[Delta, Full, Remove, Touch, Rotate]

#: The epoch a look-up reports for an id that was rotated away here (a
#: tombstone): real copies start at epoch 1.
GONE = 0


class Result(enum.IntEnum):
    """
    A backup's answer to one replication record.
    """

    OK = 0
    DUPLICATE = 1
    GAP = 2
    FENCED = 3
    # another primary holds this very epoch: two servers promoted the same
    # session at once; the sender stops serving its copy but keeps it
    RIVAL = 4

    @property
    def acknowledged(self) -> bool:
        return self in (Result.OK, Result.DUPLICATE)


class Fenced(Exception):
    """
    A newer owner holds the session: this copy must not accept writes.
    """


class TooLarge(Exception):
    """
    The session would grow past the configured size limit.
    """


#: Entries of the expiry wheel a sweep looks at, at most, per call.
SWEEP = 10_000


class Store:
    """
    Every copy the node holds.  Besides the copies by sid it keeps, so that
    nothing on a busy node walks every session: the copies by (primary,
    secondary) pair and first character of the sid (a digest, a
    re-protection, a promotion or a drain looks only at its own), an
    expiry wheel, and the counts of this node's primaries and of those
    without a secondary.  So every change of a copy's primary, secondary or
    presence goes through a method here.

    For the metrics (L{appliance.metrics}) it counts sessions created,
    ended (by expiry, invalidation or rotation of their id: counted once,
    by their primary) and promoted, and, with C{counting}, keeps the
    histogram of the sizes of the copies held (L{sizes}), updated on every
    change of size or presence.
    """

    def __init__(self, node: str, timeout: float, max_bytes: int = 16 * 1024 * 1024, counting: bool = True):
        self.node = node
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.sessions: Dict[str, Session] = {}
        self.primaries = 0
        self.unprotected = 0
        self.sizes: Optional[Histogram] = Histogram(BYTES) if counting else None
        self.created = 0
        self.expired_count = 0
        self.invalidated = 0
        self.rotated = 0
        self.promotions = 0
        self._incarnation = 0
        self._pairs: Dict[Tuple[str, Optional[str]], Dict[str, Dict[str, None]]] = {}
        self._wheel = ExpiryWheel()
        # Ids rotated away (sid -> until when), and their expiry order.
        self.tombstones: Dict[str, float] = {}
        self._burials: List[Tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def incarnation(self) -> int:
        """
        This node's incarnation, stamped on the primaries it holds.  A new
        one makes every primary of the old one an orphan.
        """
        return self._incarnation

    @incarnation.setter
    def incarnation(self, value: int) -> None:
        newer = value > self._incarnation
        self._incarnation = value
        if newer:
            # Copies are stamped with this node's incarnation of their time,
            # never a later one: a new incarnation is primary of nothing yet
            # (no walk over a million copies while the reactor waits).
            self.primaries = self.unprotected = 0
            return
        mine = [s for s in self._paired(self.node) if s.primary_inc == value]
        self.primaries = len(mine)
        self.unprotected = sum(1 for s in mine if s.secondary is None)

    @property
    def backups(self) -> int:
        """
        Copies held here whose primary is elsewhere (or an earlier
        incarnation of this node).
        """
        return len(self.sessions) - self.primaries

    # -- the indexes -------------------------------------------------------

    def _put(self, session: Session) -> None:
        old = self.sessions.get(session.sid)
        if old is not None:
            self._forget(old)
        self.sessions[session.sid] = session
        self._index(session)
        if self.mine(session):
            self.primaries += 1
            if session.secondary is None:
                self.unprotected += 1
        if self.sizes is not None:
            self.sizes.observe(session.size)
        self._schedule(session)

    def _forget(self, session: Session) -> None:
        self._unindex(session)
        if self.mine(session):
            self.primaries -= 1
            if session.secondary is None:
                self.unprotected -= 1
        if self.sizes is not None:
            self.sizes.forget(session.size)

    def _index(self, session: Session) -> None:
        sid = session.sid
        self._pairs.setdefault((session.primary, session.secondary), {}).setdefault(sid[0], {})[sid] = None

    def _unindex(self, session: Session) -> None:
        key = (session.primary, session.secondary)
        buckets = self._pairs.get(key)
        if buckets is None:
            return
        sid = session.sid
        bucket = buckets.get(sid[0])
        if bucket is not None and bucket.pop(sid, 0) is None:
            if not bucket:
                del buckets[sid[0]]
                if not buckets:
                    del self._pairs[key]

    def _relabel(self, session: Session, primary: str, secondary: Optional[str], primary_inc: int) -> None:
        """
        Change who a copy names as primary and secondary, keeping the
        indexes and the count right.
        """
        was = self.mine(session)
        bare = was and session.secondary is None
        self._unindex(session)
        session.primary = primary
        session.secondary = secondary
        session.primary_inc = primary_inc
        self._index(session)
        now_mine = self.mine(session)
        self.primaries += now_mine - was
        self.unprotected += (now_mine and secondary is None) - bare

    def _paired(self, primary: str, secondary=..., prefixes: Optional[str] = None) -> Iterator[Session]:
        """
        Copies whose primary is C{primary} (and secondary C{secondary},
        when given), whose sid starts with one of C{prefixes} (any, when
        C{None}).
        """
        sessions = self.sessions
        keys = [k for k in self._pairs if k[0] == primary and (secondary is ... or k[1] == secondary)]
        for key in keys:
            buckets = self._pairs.get(key, {})
            chars = list(buckets) if prefixes is None else [c for c in prefixes if c in buckets]
            for c in chars:
                for sid in list(buckets.get(c, ())):
                    yield sessions[sid]

    def drop(self, sid: str) -> Optional[Session]:
        """
        Forget this copy (it is stale, or handed over); returns it.
        """
        session = self.sessions.pop(sid, None)
        if session is not None:
            self._forget(session)
        return session

    def _schedule(self, session: Session) -> None:
        slot = self._wheel.slot(session.last_access + session.timeout)
        if session.due and session.due <= slot:
            return
        session.due = slot
        self._wheel.add(session.sid, slot)

    # -- reading -----------------------------------------------------------

    def get(self, sid: str) -> Optional[Session]:
        return self.sessions.get(sid)

    def mine(self, session: Session) -> bool:
        """
        Whether this node, in its current incarnation, is the copy's primary
        (a copy this node was primary of in an earlier incarnation is an
        orphan like any backup of a dead primary).
        """
        return session.primary == self.node and session.primary_inc == self._incarnation

    def primary_of(self, sid: str) -> Optional[Session]:
        """
        The session if this node is its primary.
        """
        session = self.sessions.get(sid)
        if session is not None and self.mine(session):
            return session
        return None

    def create(self, sid: str, changes: Changes, secondary: Optional[str], now: float) -> Full:
        """
        A new session at version 1, epoch 1, primary here; returns the full
        state to send to the secondary.
        """
        if sid in self.sessions:
            raise ValueError(f"session {sid} exists")
        size = sum(len(v) for v in changes.set.values())
        if size > self.max_bytes:
            raise TooLarge(f"session would be {size} bytes, the limit is {self.max_bytes}")
        session = Session(
            sid=sid,
            values=dict(changes.set),
            version=1,
            epoch=1,
            primary=self.node,
            secondary=secondary,
            last_access=now,
            timeout=self._timeout(changes, self.timeout),
            size=size,
            primary_inc=self._incarnation,
        )
        self._put(session)
        self.created += 1
        return session.full(now)

    def _timeout(self, changes: Changes, current: float) -> float:
        if changes.timeout is None:
            return current
        return self.timeout if changes.timeout == DEFAULT_TIMEOUT else changes.timeout

    def commit(self, session: Session, changes: Changes, now: float) -> Optional[Union[Delta, Full]]:
        """
        Apply one request's changes on the primary: the version goes up by
        one and the delta to replicate is returned (C{None} if nothing
        changed, which only touches the session; the full state when the
        session's lifetime changed, which a delta does not carry).
        """
        if self.sessions.get(session.sid) is not session or not self.mine(session):
            raise Fenced(session.sid)
        session.last_access = now
        if not changes:
            return None
        size = self.size_after(session, changes)
        values = session.values
        values.update(changes.set)
        for key in changes.removed:
            values.pop(key, None)
        if self.sizes is not None:
            self.sizes.move(session.size, size)
        session.size = size
        session.version += 1
        timeout = self._timeout(changes, session.timeout)
        if timeout != session.timeout:
            session.timeout = timeout
            self._schedule(session)
            return session.full(now)
        return Delta(
            session.sid,
            session.epoch,
            session.version,
            session.primary,
            session.secondary,
            changes.set,
            changes.removed,
        )

    def size_after(self, session: Session, changes: Changes) -> int:
        """
        The size C{session} would have with C{changes}; L{TooLarge} if over
        the limit (checked before anything is changed).
        """
        values = session.values
        size = session.size
        for key, data in changes.set.items():
            size += len(data) - len(values.get(key, b""))
        for key in changes.removed:
            size -= len(values.get(key, b""))
        if size > self.max_bytes:
            raise TooLarge(f"session would be {size} bytes, the limit is {self.max_bytes}")
        return size

    def touch(self, session: Session, now: float) -> Touch:
        session.last_access = now
        return Touch(session.sid, session.epoch)

    def rotate(self, session: Session, new: str, now: float) -> Rotate:
        """
        Give one of our primaries the id C{new}, keeping its data, version
        and epoch; its old id is dead here from now on (see L{gone}) and the
        returned record kills it on the backup.
        """
        if self.sessions.get(session.sid) is not session or not self.mine(session):
            raise Fenced(session.sid)
        if new in self.sessions or new in self.tombstones:
            raise ValueError(f"session {new} exists")
        self._rename(session, new, now)
        self.rotated += 1
        return Rotate(new, session.former[-1][0], session.epoch, session.version, session.primary, session.secondary)

    def _rename(self, session: Session, new: str, now: float) -> None:
        old = session.sid
        self.drop(old)
        # A copy of the old id, wherever one was left, expires within its
        # lifetime: so long the old id stays dead.
        until = now + max(session.timeout, self.timeout)
        session.former = tuple(f for f in session.former if f[1] > now)[1 - MAX_FORMER :] + ((old, until),)
        session.sid = new
        # Filed again under its new id (the old id's entries find nothing).
        session.due = 0
        self._put(session)
        self._bury(old, until)

    def _bury(self, sid: str, until: float) -> None:
        """
        C{sid} must never be served again (until C{until}): a copy held
        here under it goes.
        """
        self.drop(sid)
        if self.tombstones.get(sid, -1.0) < until:
            self.tombstones[sid] = until
            heapq.heappush(self._burials, (until, sid))

    def _bury_former(self, session: Session, former: Iterable[Tuple[str, float]], now: float) -> None:
        if not former:
            # Nearly every session: never rotated (a mass re-protection
            # applies a hundred thousand of these).
            session.former = ()
            return
        session.former = tuple((sid, now + left) for sid, left in former)
        for sid, until in session.former:
            self._bury(sid, until)

    def gone(self, sid: str) -> bool:
        """
        Whether C{sid} was given up for a new id: it is never served again.
        """
        return sid in self.tombstones

    def unrotate(self, sid: str, old: str) -> None:
        """
        The backup refused our rotation of C{old} to C{sid} (a newer or a
        rival owner holds the session under C{old}): our copy takes its old
        id back and C{old} is not reported dead, so that the look-ups that
        settle which copy lives on compare copies of one id, and no full
        state of ours buries C{old} where the other owner keeps it.
        """
        self.tombstones.pop(old, None)
        session = self.sessions.get(sid)
        if session is None or old in self.sessions or not session.former or session.former[-1][0] != old:
            return
        self.drop(sid)
        session.sid = old
        session.former = session.former[:-1]
        session.due = 0
        self._put(session)

    def remove(self, sid: str) -> Optional[Remove]:
        """
        The application ended one of our sessions (invalidated it): the
        record removes it on the backup.
        """
        session = self.drop(sid)
        if session is None:
            return None
        self.invalidated += 1
        return Remove(sid, session.epoch)

    def set_secondary(self, session: Session, secondary: Optional[str], now: float) -> Full:
        """
        Re-protect a primary copy on another node (or note that it has
        none): the new secondary gets the full state.
        """
        if secondary != session.secondary:
            self._relabel(session, session.primary, secondary, session.primary_inc)
        return session.full(now)

    def apply(self, record: Record, now: float, incarnation: int = 0) -> Result:
        """
        The backup's rules: exact base version applies; same or older is a
        duplicate; a gap or an unknown session asks for the full state; an
        older epoch is fenced; a change or a full state of the same epoch
        from another primary is a rival's.  C{incarnation} is the sending primary's.
        """
        local = self.sessions.get(record.sid)
        if isinstance(record, Full):
            return self._apply_full(local, record, now, incarnation)
        if isinstance(record, Rotate):
            return self._apply_rotate(local, record, now, incarnation)
        if local is None:
            return Result.OK if isinstance(record, Remove) else Result.GAP
        if record.epoch < local.epoch:
            return Result.FENCED
        if isinstance(record, Remove):
            self.drop(record.sid)
            return Result.OK
        if record.epoch > local.epoch:
            return Result.GAP
        if isinstance(record, Touch):
            local.last_access = now
            return Result.OK
        if record.primary != local.primary:
            return Result.RIVAL
        if record.version <= local.version:
            return Result.DUPLICATE
        if record.version != local.version + 1:
            return Result.GAP
        values = local.values
        size = local.size
        for key, data in record.set.items():
            local.size += len(data) - len(values.get(key, b""))
            values[key] = data
        for key in record.removed:
            local.size -= len(values.pop(key, b""))
        if self.sizes is not None:
            self.sizes.move(size, local.size)
        local.version = record.version
        if (local.primary, local.secondary, local.primary_inc) != (record.primary, record.secondary, incarnation):
            self._relabel(local, record.primary, record.secondary, incarnation)
        local.last_access = now
        return Result.OK

    def _apply_rotate(self, local: Optional[Session], record: Rotate, now: float, incarnation: int) -> Result:
        """
        Rename the copy of C{record.old}; anything else than exactly that
        copy asks for the full state under the new id (which carries the
        old id as dead), so the old id dies here only once the rotation is
        known to have happened.
        """
        if local is not None:
            return Result.DUPLICATE
        old = self.sessions.get(record.old)
        if old is None:
            return Result.GAP
        if record.epoch < old.epoch:
            return Result.FENCED
        if record.epoch == old.epoch and record.primary != old.primary:
            return Result.RIVAL
        if record.epoch > old.epoch or record.version != old.version:
            return Result.GAP
        self._rename(old, record.sid, now)
        self._relabel(old, record.primary, record.secondary, incarnation)
        old.last_access = now
        return Result.OK

    def _apply_full(self, local: Optional[Session], record: Full, now: float, incarnation: int) -> Result:
        if record.sid in self.tombstones:
            # A late copy of an id rotated away: whoever sends it is behind.
            return Result.FENCED
        if local is not None:
            if record.epoch < local.epoch:
                return Result.FENCED
            if record.epoch == local.epoch and record.primary != local.primary:
                return Result.RIVAL
            if record.epoch == local.epoch and record.version < local.version:
                return Result.DUPLICATE
        session = Session(
            sid=record.sid,
            values=dict(record.values),
            version=record.version,
            epoch=record.epoch,
            primary=record.primary,
            secondary=record.secondary,
            last_access=now - record.idle,
            timeout=record.timeout,
            size=sum(len(v) for v in record.values.values()),
            primary_inc=incarnation,
        )
        self._put(session)
        self._bury_former(session, record.former, now)
        return Result.OK

    def fenced(self, sid: str, epoch: int) -> bool:
        """
        A backup answered "fenced" to a record of C{epoch}: drop this copy if
        it is still that epoch's.  Returns whether it was dropped.
        """
        session = self.sessions.get(sid)
        if session is not None and session.epoch <= epoch:
            self.drop(sid)
            return True
        return False

    def demote(self, sid: str, epoch: int) -> bool:
        """
        A backup answered that another primary holds C{epoch} of C{sid}:
        stop serving our copy of that epoch, but keep it, as an orphan of
        an earlier incarnation, for the look-ups that decide which copy
        lives on (both rivals may have refused each other).  Returns
        whether ours was demoted.
        """
        session = self.sessions.get(sid)
        if session is not None and self.mine(session) and session.epoch == epoch:
            self._relabel(session, session.primary, session.secondary, self._incarnation - 1)
            return True
        return False

    def hand_over(self, sid: str, requester: str, now: float, requester_inc: int = 0) -> Optional[Full]:
        """
        Another node takes this session over: the epoch goes up and the
        requester (at C{requester_inc}) becomes primary.  Returns the full
        state for the requester, or C{None} if this node holds nothing.

        The copy here stays, under the new epoch and primary: it is no
        longer ours to serve, and should the answer never reach the
        requester it is the copy the requester (which it names as primary)
        takes again (see L{appliance.server.node}); otherwise it is a
        stale backup that expires, or loses to the newer copies when the
        requester dies.  A backup that is the session's secondary stays
        its secondary.
        """
        session = self.sessions.get(sid)
        if session is None:
            return None
        session.epoch += 1
        if not self.mine(session) and session.secondary == self.node:
            secondary = self.node
        else:
            secondary = session.secondary
        self._relabel(session, requester, secondary, requester_inc)
        full = session.full(now)
        session.last_access = now
        return full

    def adopt(self, full: Full, secondary: Optional[str], now: float) -> Session:
        """
        Become primary of a session taken over (C{full} already carries the
        raised epoch).
        """
        session = Session(
            sid=full.sid,
            values=dict(full.values),
            version=full.version,
            epoch=full.epoch,
            primary=self.node,
            secondary=secondary,
            last_access=now,
            timeout=full.timeout,
            size=sum(len(v) for v in full.values.values()),
            primary_inc=self._incarnation,
        )
        self._put(session)
        self._bury_former(session, full.former, now)
        return session

    def promote(self, sid: str, secondary: Optional[str], now: float, floor: int = 0) -> Optional[Session]:
        """
        A backup becomes primary (its primary is gone): epoch + 1, and above
        C{floor}, an epoch another holder is known to carry already.
        """
        session = self.sessions.get(sid)
        if session is None:
            return None
        session.epoch = max(session.epoch + 1, floor + 1)
        self._relabel(session, self.node, secondary, self._incarnation)
        session.last_access = now
        self.promotions += 1
        return session

    # -- time --------------------------------------------------------------

    def expired(self, now: float, limit: int = SWEEP) -> List[str]:
        """
        Remove and return the sessions idle past their timeout, primary or
        backup alike, found on the expiry wheel, not by walking every
        session.  At most C{limit} entries of the wheel are looked at (the
        rest wait: see L{expiry_due}).
        """
        gone: List[str] = []
        sessions = self.sessions
        left = limit
        while left > 0:
            due = self._wheel.pop(now, left)
            if due is None:
                break
            slot, sids = due
            left -= len(sids)
            for sid in sids:
                s = sessions.get(sid)
                if s is None or s.due != slot:
                    continue
                s.due = 0
                if now >= s.last_access + s.timeout:
                    if self.mine(s):
                        self.expired_count += 1
                    self.drop(sid)
                    gone.append(sid)
                else:
                    self._schedule(s)
        burials, tombstones = self._burials, self.tombstones
        while burials and burials[0][0] <= now:
            until, sid = heapq.heappop(burials)
            if tombstones.get(sid) == until:
                del tombstones[sid]
        return gone

    def expiry_due(self, now: float) -> bool:
        """
        Whether sessions are still due for an expiry look at C{now}.
        """
        return self._wheel.due(now)

    # -- looking copies up -------------------------------------------------

    def orphans(self, primary: str, incarnation: int) -> List[Session]:
        """
        Backups whose primary is C{primary} at C{incarnation} or older.
        """
        mine = self.mine
        return [s for s in self._paired(primary) if s.primary_inc <= incarnation and not mine(s)]

    def has_orphans(self, primary: str, incarnation: int) -> bool:
        """
        Whether L{orphans} would list any, found without listing them all
        (the question comes with every login and every lost link).
        """
        mine = self.mine
        return any(s.primary_inc <= incarnation and not mine(s) for s in self._paired(primary))

    def copies(self, sids: Iterable[str]) -> List[Tuple[str, int, int, str, int]]:
        """
        (sid, epoch, version, primary, primary's incarnation) of each of
        C{sids} held here: what a node looking for the newest copy of a
        session needs to know.  An id rotated away here is reported at
        epoch L{GONE}.
        """
        out = []
        for sid in sids:
            s = self.sessions.get(sid)
            if s is not None:
                out.append((sid, s.epoch, s.version, s.primary, s.primary_inc))
            elif sid in self.tombstones:
                out.append((sid, GONE, 0, self.node, 0))
        return out

    def backed_by(self, peer: Optional[str], prefixes: Optional[str] = None) -> List[Session]:
        """
        Primary copies whose secondary is C{peer} (C{None}: none), of the
        sids starting with one of C{prefixes} when given.
        """
        inc = self._incarnation
        return [s for s in self._paired(self.node, peer, prefixes) if s.primary_inc == inc]

    def owned(self) -> List[Session]:
        """
        Every primary copy of this incarnation.
        """
        inc = self._incarnation
        return [s for s in self._paired(self.node) if s.primary_inc == inc]

    # -- digests -----------------------------------------------------------

    def digest(self, peer: str, prefixes: Optional[str] = None) -> List[Tuple[str, int, int]]:
        """
        (sid, version, epoch) of every primary copy backed by C{peer}, and
        of those backed by nobody (whose sid starts with one of
        C{prefixes}, when given).

        A copy with no secondary is listed so that C{peer} keeps the copy
        it may still hold (see L{compare}): this node lost its link to it,
        not the session, and that copy may be the only other one.
        """
        return [(s.sid, s.version, s.epoch) for s in self.backed_by(peer, prefixes) + self.backed_by(None, prefixes)]

    def digest_sizes(self, peer: str) -> Dict[str, int]:
        """
        How many entries the digest for C{peer} has per first character of
        their sid (how a digest is cut into parts; copies of an earlier
        incarnation count too).
        """
        sizes = {c: len(bucket) for c, bucket in self._pairs.get((self.node, peer), {}).items()}
        for c, bucket in self._pairs.get((self.node, None), {}).items():
            sizes[c] = sizes.get(c, 0) + len(bucket)
        return sizes

    def backed_count(self, peer: str) -> int:
        """
        How many primary copies here name C{peer} their secondary (copies
        of an earlier incarnation count too).
        """
        return sum(len(bucket) for bucket in self._pairs.get((self.node, peer), {}).values())

    def compare(
        self, primary: str, digest: Iterable[Tuple[str, int, int]], incarnation: int = 0, prefixes: Optional[str] = None
    ) -> List[str]:
        """
        On the backup: the sids from C{primary}'s digest that differ from the
        copies here (so need the full state).  Backups that this incarnation
        of C{primary} still claims to own but left out of its digest are
        dropped: it removed them (or moved them to another secondary) and
        the news was lost.  (It lists those it holds with no secondary:
        their copy here is kept.)  A digest in parts covers the sids starting with
        one of C{prefixes}: only those can be left out of it.  Backups of an
        older incarnation are not its to disown: they are orphans (see
        L{orphans}).
        """
        listed = set()
        differ = []
        for sid, version, epoch in digest:
            listed.add(sid)
            local = self.sessions.get(sid)
            if local is None or local.version != version or local.epoch != epoch:
                differ.append(sid)
        stale = [
            s.sid
            for s in self._paired(primary, self.node, prefixes)
            if s.primary_inc == incarnation and s.sid not in listed
        ]
        for sid in stale:
            self.drop(sid)
        return differ


def topology_distance(a, b) -> int:
    """
    How far apart two nodes are: 3 on different sites, 2 different racks,
    1 different machines, 0 on one machine.
    """
    if a.site != b.site:
        return 3
    if a.rack != b.rack:
        return 2
    if a.machine != b.machine:
        return 1
    return 0


def place_secondary(
    me, candidates: Iterable, load: Dict[str, int], pinned: Tuple[str, ...] = ()
) -> Optional[str]:
    """
    The secondary for a session whose primary is C{me}: among live
    C{candidates} (node configs), the furthest away in the topology, then
    the least loaded, then by name for determinism.  C{pinned}, when given,
    limits the choice to those nodes.
    """
    best: Optional[Tuple[int, int, str]] = None
    for node in candidates:
        if node.name == me.name or (pinned and node.name not in pinned):
            continue
        key = (-topology_distance(me, node), load.get(node.name, 0), node.name)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]
