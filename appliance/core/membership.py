"""
Who is alive, who may serve, who may promote: incarnations, leases and a
quorum of voters.

The voters are the session servers and the witness balancers.  A server may
serve (acknowledge a write, answer a read) only while it holds a *lease*: the
grants of a majority of voters.  A voter's grant is a promise not to vote the
server dead until C{lease} seconds after the grant, on the voter's monotonic
clock; the server counts on the grant for a little less, measured from the
moment it *asked*, so that bounded clock-rate drift cannot make the two
overlap.  A server's sessions are taken over from a backup copy only once a
majority of voters has voted it dead.  Any two majorities share a voter, and a
voter that voted a server dead never grants that incarnation again, so a
server that may still serve and a verdict of its death cannot both hold.

A restarted server is a new *incarnation* (a larger number): every login
carries it, and a newer incarnation proves the older one gone (its state went
with its process).  Nothing a new incarnation says is taken as news about the
sessions of the old one.

A refused connection to a server's replication port is a voter's proof that
no process listens there: that voter may vote at once instead of waiting for
its promise to lapse.  (Firewalls between nodes must drop, not reject.)

Nothing here does I/O or reads a clock: times are passed in.
"""

from __future__ import annotations

import enum
from typing import Dict, Iterable, Optional, Sequence, Tuple

from attrs import frozen

NEVER = float("-inf")
FOREVER = float("inf")


class Renewal(enum.IntEnum):
    """
    A voter's answer to a lease renewal.
    """

    GRANTED = 0
    # This voter voted this incarnation dead.
    DEAD = 1
    # A newer incarnation of this server was seen: this one is over.
    STALE = 2
    # This voter only just started: it grants nothing yet.
    NOT_YET = 3


# A round of votes counts only if it was gathered within this fraction of a
# lease, and a restarted voter (which forgot its votes) grants nothing for
# this long: no verdict counts a vote its voter has forgotten.
ROUND = 0.5


@frozen
class Timing:
    """
    C{lease}: how long a voter's grant binds it.  C{drift}: the bound on the
    rate error of any monotonic clock of the cluster against real time.
    """

    lease: float
    drift: float = 0.01

    @property
    def held_for(self) -> float:
        """
        How long after asking a server may count on a grant: the voter's
        C{lease} as the slowest real interval a fast server clock could
        measure against the fastest voter clock.
        """
        return self.lease * (1.0 - self.drift) / (1.0 + self.drift)


def majority(voters: Sequence[str]) -> int:
    return len(voters) // 2 + 1


class Voter:
    """
    One voter's promises about every server: which incarnation it knows,
    when it last granted it a lease, and which incarnations it voted dead.

    A yes vote binds for good: this voter never grants that incarnation
    again.  A server that such a vote shuts out while it still holds its
    lease (the voter was cut off from it, not the majority) starts a new
    incarnation (L{appliance.server.quorum.Quorum.beat}).

    C{started}: when this voter came up.  A restarted voter remembers none of
    its grants and votes: it votes nobody dead (except on proof) for one
    C{lease} after its start, and grants nothing for one L{ROUND} (a vote it
    gave before restarting may be in an asker's round).  C{born}, on the
    scale of incarnation numbers, is when it started: it never grants an
    older incarnation that has not held its lease yet (it may have voted
    that one dead before it restarted; one that held its lease is safe by
    the lapse rule of L{Lease}).
    """

    def __init__(self, lease: float, started: float, born: int = 0):
        self.lease = lease
        self.started = started
        self.born = born
        self.known: Dict[str, int] = {}
        self.granted: Dict[str, float] = {}
        self.heard: Dict[str, float] = {}
        self.seen_at: Dict[str, float] = {}
        self.dead: Dict[str, int] = {}

    def _bury(self, server: str, incarnation: int) -> None:
        if incarnation > self.dead.get(server, -1):
            self.dead[server] = incarnation

    def is_dead(self, server: str, incarnation: int) -> bool:
        return incarnation <= self.dead.get(server, -1)

    def seen(self, server: str, incarnation: int, now: float = NEVER) -> Optional[int]:
        """
        C{server} logged in as C{incarnation} at C{now}.  Returns the
        incarnation it supersedes (now dead), if any.
        """
        known = self.known.get(server)
        if known is not None and incarnation <= known:
            return None
        self.known[server] = incarnation
        self.granted.pop(server, None)
        self.seen_at[server] = now
        if known is not None:
            self._bury(server, known)
        return known

    def renew(self, server: str, incarnation: int, now: float, held: bool = True) -> Renewal:
        """
        C{server} asks for its lease (C{held}: whether this incarnation has
        held it before): granted unless that incarnation was voted dead or
        superseded, or this voter only just started.
        """
        self.heard[server] = now
        if self.is_dead(server, incarnation):
            return Renewal.DEAD
        known = self.known.get(server)
        if known is not None and incarnation < known:
            self._bury(server, incarnation)
            return Renewal.STALE
        if not held and incarnation < self.born:
            return Renewal.STALE
        if known is None or incarnation > known:
            self.seen(server, incarnation, now)
        if now < self.started + ROUND * self.lease:
            return Renewal.NOT_YET
        self.granted[server] = now
        return Renewal.GRANTED

    def vote(self, server: str, incarnation: int, now: float) -> bool:
        """
        Is this incarnation of C{server} dead?  No while this voter's last
        grant to it still binds; a yes binds: this voter never grants it
        again.
        """
        if self.is_dead(server, incarnation):
            return True
        known = self.known.get(server)
        if known is not None and incarnation < known:
            self._bury(server, incarnation)
            return True
        if now < self.started + self.lease:
            return False
        # Silent for a lease since the last grant, or since it showed up (a
        # new incarnation gets a lease's time to ask before it can be voted
        # dead).
        last = max(self.granted.get(server, NEVER), self.seen_at.get(server, NEVER))
        if known == incarnation and now < last + self.lease:
            return False
        self._bury(server, incarnation)
        return True

    def proof(self, server: str, incarnation: int) -> None:
        """
        No process listens on C{server}'s port: C{incarnation} and every
        older one are dead.
        """
        self._bury(server, incarnation)

    def silent(self, server: str, now: float) -> bool:
        """
        Whether C{server} has asked for nothing here for a whole lease: it
        is dead, paused or cut off from this voter.
        """
        return now >= self.heard.get(server, NEVER) + self.lease


class Lease:
    """
    A server's own lease: the grants it holds, each good until the time it
    asked plus L{Timing.held_for}.  Its own vote counts as a grant that
    never lapses.  L{expires} is the moment the majority-th best grant
    lapses: the server may serve while the time is before it.

    A lease that lapsed is never renewed again: by then a majority may have
    voted this incarnation dead, and a voter that restarts forgets its
    votes, so grants asked after the lapse are ignored and the server ends
    its incarnation (L{should_end}).
    """

    def __init__(self, me: str, voters: Sequence[str], timing: Timing):
        self.me = me
        self.voters = tuple(voters)
        self.needed = majority(self.voters)
        self.timing = timing
        self.until: Dict[str, float] = {v: NEVER for v in self.voters}
        self.until[me] = FOREVER
        self.expires = NEVER
        self._recount()

    def _recount(self) -> None:
        ranked = sorted(self.until.values(), reverse=True)
        self.expires = ranked[self.needed - 1]

    def reconfigure(self, voters: Sequence[str]) -> None:
        """
        The voters changed (a reload added or removed one): grants of the
        voters that stay are kept, a new voter has granted nothing, and
        the lease never lasts longer for it.  Safe one voter at a time:
        any majority of the old voters and any of the new ones share a
        voter (as in Raft's single-server change).
        """
        before = self.expires
        self.voters = tuple(voters)
        self.needed = majority(self.voters)
        self.until = {v: self.until.get(v, NEVER) for v in self.voters}
        self.until[self.me] = FOREVER
        self._recount()
        if before != NEVER:
            self.expires = min(before, self.expires)

    def granted(self, voter: str, asked_at: float) -> None:
        if self.expires != NEVER and asked_at >= self.expires:
            return
        until = asked_at + self.timing.held_for
        if voter in self.until and until > self.until[voter]:
            self.until[voter] = until
            self._recount()

    def valid(self, now: float) -> bool:
        return now < self.expires

    @property
    def held(self) -> bool:
        """
        Whether this incarnation ever held its lease.
        """
        return self.expires != NEVER

    def should_end(self, now: float) -> bool:
        """
        A lease held once and lapsed: this incarnation can never serve again
        and ends (which also lets the voters that still hear it vote it
        dead: they see a newer incarnation).  A server that never held its
        lease has served nothing and just waits.
        """
        return self.expires != NEVER and now >= self.expires


class Membership:
    """
    One server's view of the cluster: its incarnation and lease, its votes
    on the other servers, and the verdicts it knows (incarnations a majority
    voted dead, or that a newer incarnation superseded).
    """

    def __init__(
        self,
        me: str,
        incarnation: int,
        servers: Sequence[str],
        witnesses: Sequence[str],
        timing: Timing,
        now: float,
    ):
        self.me = me
        self.incarnation = incarnation
        self.servers = tuple(servers)
        self.voters = self.servers + tuple(witnesses)
        self.needed = majority(self.voters)
        self.timing = timing
        self.voter = Voter(timing.lease, now, incarnation)
        self.lease = Lease(me, self.voters, timing)
        self.verdicts: Dict[str, int] = {}

    # -- this server -------------------------------------------------------

    def may_serve(self, now: float) -> bool:
        return self.lease.valid(now)

    def renewed(self, voter: str, answer: Renewal, asked_at: float) -> bool:
        """
        A voter answered a renewal asked at C{asked_at}; returns whether it
        granted it.
        """
        if answer is Renewal.GRANTED:
            self.lease.granted(voter, asked_at)
            return True
        return False

    def begin(self, incarnation: int, now: float) -> None:
        """
        Start a new incarnation (after this one was voted dead or lost its
        lease): no grant carries over; the votes this node gave others do.
        """
        if incarnation <= self.incarnation:
            raise ValueError("a new incarnation must be larger")
        self.incarnation = incarnation
        self.lease = Lease(self.me, self.voters, self.timing)

    def reconfigure(self, servers: Sequence[str], witnesses: Sequence[str]) -> None:
        """
        A reload changed the servers or the witnesses (one voter at a
        time: see L{Lease.reconfigure}); verdicts and votes are kept.
        """
        self.servers = tuple(servers)
        self.voters = self.servers + tuple(witnesses)
        self.needed = majority(self.voters)
        self.lease.reconfigure(self.voters)

    # -- other servers -----------------------------------------------------

    def seen(self, server: str, incarnation: int, now: float = NEVER) -> Optional[int]:
        """
        C{server} showed up as C{incarnation} (a login or an answer).
        Returns the incarnation it supersedes, which is dead from now on.
        """
        old = self.voter.seen(server, incarnation, now)
        if old is not None:
            self._dead(server, old)
        return old

    def incarnation_of(self, server: str) -> Optional[int]:
        return self.voter.known.get(server)

    def _dead(self, server: str, incarnation: int) -> None:
        if incarnation > self.verdicts.get(server, -1):
            self.verdicts[server] = incarnation

    def is_dead(self, server: str, incarnation: Optional[int]) -> bool:
        """
        Whether a verdict says this incarnation of C{server} is dead (an
        unknown incarnation is not; this node's own earlier ones are).
        """
        if incarnation is None:
            return False
        if server == self.me:
            return incarnation < self.incarnation
        return incarnation <= self.verdicts.get(server, -1)

    def known_dead(self, server: str, incarnation: int) -> None:
        """
        A peer reports a verdict it reached; verdicts are facts and final.
        """
        self._dead(server, incarnation)

    def tally(self, server: str, incarnation: int, votes: Iterable[Tuple[str, bool]], now: float) -> bool:
        """
        Count one round of votes on C{incarnation} of C{server} (voter,
        dead?), gathered within L{ROUND} of a lease, this node's own
        included; a majority of yes is a verdict.
        """
        if self.is_dead(server, incarnation):
            return True
        yes = {self.me} if self.voter.vote(server, incarnation, now) else set()
        for voter, dead in votes:
            if dead and voter in self.voters:
                yes.add(voter)
        if len(yes) >= self.needed:
            self._dead(server, incarnation)
            return True
        return False
