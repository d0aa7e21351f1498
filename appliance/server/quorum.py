"""
A session server's membership at work: the lease it renews over its links,
the votes it gives, and the verdicts it asks the other voters for.

The rules are L{appliance.core.membership}; this module only carries their
inputs (renewal answers, logins, refused connections, votes) and outputs
(may this node serve, is that incarnation dead) over the links.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from appliance.core.membership import ROUND, Membership, Renewal
from appliance.replication import witness

log = Logger()


class Quorum:
    """
    C{call(voter, method, *args)} calls another voter over its link;
    C{connected(voter)} says whether that link is up; C{probe(server)}
    fires C{True} when a connection to that server's replication port is
    refused; C{now} is the monotonic clock; C{interval} how often verdicts
    are asked again while a peer stays silent.
    """

    def __init__(
        self,
        clock,
        membership: Membership,
        now: Callable[[], float],
        call: Callable[..., defer.Deferred],
        connected: Callable[[str], bool],
        probe: Callable[[str], defer.Deferred],
        interval: float,
    ):
        self.clock = clock
        self.membership = membership
        self.now = now
        self.call = call
        self.connected = connected
        self.probe = probe
        self.interval = interval
        self.on_dead: Callable[[str, int], None] = lambda server, incarnation: None
        self._serving = False
        self._timers: set = set()
        self._polls: Dict[Tuple[str, int], List[defer.Deferred]] = {}

    @property
    def me(self) -> str:
        return self.membership.me

    @property
    def incarnation(self) -> int:
        return self.membership.incarnation

    # -- this node's lease -------------------------------------------------

    def may_serve(self) -> bool:
        return self.membership.may_serve(self.now())

    def beat(self, voter: str, answer, asked_at: float) -> Optional[str]:
        """
        A renewal asked at C{asked_at} was answered (answer, load, the
        voter's incarnation).  A voter that refuses for good (it voted this
        incarnation dead, perhaps while one of the two was cut off from the
        other, or it restarted since this incarnation began and this one
        never held its lease) weakens this node's quorum for as long as the
        incarnation lasts, so the node starts a new one: returns why.
        """
        if not (isinstance(answer, (list, tuple)) and len(answer) == 3 and all(type(a) is int for a in answer)):
            log.warn("{voter} answered a lease renewal wrongly: {answer!r}", voter=voter, answer=answer)
            return None
        code, _, incarnation = answer
        if voter in self.membership.servers and incarnation > 0:
            self.seen(voter, incarnation)
            self.heard(voter, incarnation)
        try:
            renewal = Renewal(code)
        except ValueError:
            log.warn("{voter} answered a lease renewal with an unknown code {code}", voter=voter, code=code)
            return None
        if self.membership.renewed(voter, renewal, asked_at) or renewal is Renewal.NOT_YET:
            return None
        return f"{voter} no longer renews this incarnation ({renewal.name})"

    def watch(self) -> Optional[str]:
        """
        Called every heartbeat: logs when this node gains or loses its
        lease, and returns why this incarnation must end: its lease
        lapsed, and a lapsed lease never comes back.
        """
        now = self.now()
        serving = self.membership.may_serve(now)
        if serving != self._serving:
            self._serving = serving
            if serving:
                log.info("holds its lease: serving")
            else:
                log.warn("lost its lease (no majority of voters renewed it): not serving")
        if self.membership.lease.should_end(now):
            return "its lease lapsed"
        return None

    def begin(self, incarnation: int) -> None:
        """
        This node starts a new incarnation: whatever waited for a verdict
        on behalf of the old one waits no more.
        """
        self.membership.begin(incarnation, self.now())
        self._serving = False
        polls, self._polls = self._polls, {}
        for waiters in polls.values():
            for d in waiters:
                d.callback(False)

    def alone(self) -> bool:
        """
        Whether every other server is known dead (or was never seen): only
        then may this node keep a session with a single copy.
        """
        m = self.membership
        for server in m.servers:
            if server == m.me:
                continue
            incarnation = m.incarnation_of(server)
            if incarnation is not None and not m.is_dead(server, incarnation):
                return False
        return True

    # -- other servers -----------------------------------------------------

    def incarnation_of(self, server: str) -> Optional[int]:
        return self.membership.incarnation_of(server)

    def is_dead(self, server: str, incarnation: Optional[int]) -> bool:
        return self.membership.is_dead(server, incarnation)

    def seen(self, server: str, incarnation: int) -> None:
        """
        A login or an answer from C{server} as C{incarnation}: an older
        incarnation it supersedes is dead.
        """
        old = self.membership.seen(server, incarnation, self.now())
        if old is not None:
            log.info("{server} restarted (incarnation {new} after {old})", server=server, new=incarnation, old=old)
            self._settle(server, old)
            self.on_dead(server, old)

    def known_dead(self, server: str, incarnation: int) -> None:
        if not self.is_dead(server, incarnation):
            self.membership.known_dead(server, incarnation)
            self._settle(server, incarnation)
            self.on_dead(server, incarnation)

    def refused(self, server: str) -> None:
        """
        This node's link found nothing listening on C{server}'s port.
        """
        incarnation = self.incarnation_of(server)
        if incarnation is not None:
            self.membership.voter.proof(server, incarnation)

    def vote(self, server: str, incarnation: int) -> defer.Deferred:
        """
        Another voter asks whether C{incarnation} of C{server} is dead.
        """
        if server == self.me:
            return defer.succeed(incarnation < self.incarnation)
        return witness.vote(self.membership.voter, server, incarnation, self.now, self.probe)

    @defer.inlineCallbacks
    def ask(self, server: str, incarnation: int):
        """
        Ask every reachable voter for its vote on C{incarnation} of
        C{server}; C{True} once a majority voted it dead.
        """
        m = self.membership
        if m.is_dead(server, incarnation):
            return True
        if not self.may_serve():
            # Only a node that may serve acts on a verdict; one cut off from
            # the majority would only bury healthy peers with its own vote.
            return False
        began = self.now()
        own = yield self.vote(server, incarnation)
        votes = [(self.me, own)]
        asks = []
        for voter in m.voters:
            if voter in (self.me, server) or not self.connected(voter):
                continue
            asks.append(self.call(voter, "vote", server, incarnation).addCallback(lambda dead, v=voter: (v, dead is True)))
        if asks:
            answers = yield defer.DeferredList(asks, consumeErrors=True)
            votes.extend(result for ok, result in answers if ok)
        if self.now() - began > ROUND * m.timing.lease:
            # A vote this old may have been gone back on: ask again.
            return False
        if m.tally(server, incarnation, votes, self.now()):
            log.info("{server} (incarnation {incarnation}) voted dead", server=server, incarnation=incarnation)
            self._settle(server, incarnation)
            self.on_dead(server, incarnation)
            return True
        return False

    def await_dead(self, server: str, incarnation: int, timeout: Optional[float]) -> defer.Deferred:
        """
        Fires C{True} once a verdict says this incarnation is dead, asking
        again every C{interval}; C{False} when C{server} is heard again as
        that incarnation or after C{timeout} seconds (C{None}: no bound).
        """
        if self.is_dead(server, incarnation):
            return defer.succeed(True)
        key = (server, incarnation)
        d = defer.Deferred()
        waiters = self._polls.get(key)
        if waiters is None:
            self._polls[key] = [d]
            self._poll(server, incarnation)
        else:
            waiters.append(d)
        if timeout is not None:
            timer = self._later(timeout, self._gave_up, key, d)
            d.addBoth(self._cancel_timer, timer)
        return d

    def _later(self, delay: float, f, *args):
        def run():
            self._timers.discard(call)
            f(*args)

        call = self.clock.callLater(delay, run)
        self._timers.add(call)
        return call

    def stop(self) -> None:
        """
        The node stops: nobody waits for a verdict any more.
        """
        timers, self._timers = self._timers, set()
        for call in timers:
            if call.active():
                call.cancel()
        polls, self._polls = self._polls, {}
        for waiters in polls.values():
            for d in waiters:
                d.callback(False)

    def _cancel_timer(self, result, timer):
        self._timers.discard(timer)
        if timer.active():
            timer.cancel()
        return result

    def _gave_up(self, key, d: defer.Deferred) -> None:
        waiters = self._polls.get(key)
        if waiters is not None and d in waiters:
            waiters.remove(d)
            d.callback(False)

    def _settle(self, server: str, incarnation: int) -> None:
        for key in [k for k in self._polls if k[0] == server and k[1] <= incarnation]:
            for d in self._polls.pop(key):
                d.callback(True)

    def heard(self, server: str, incarnation: int) -> None:
        """
        C{server}'s link is up again as C{incarnation}: whoever waited for
        its death waits no more.
        """
        key = (server, incarnation)
        for d in self._polls.pop(key, []):
            d.callback(False)

    def _poll(self, server: str, incarnation: int) -> None:
        key = (server, incarnation)
        if key not in self._polls:
            return
        if not self._polls[key]:
            del self._polls[key]
            return

        def again(dead):
            if not dead and key in self._polls:
                self._later(self.interval, self._poll, server, incarnation)

        self.ask(server, incarnation).addCallbacks(again, lambda f: (log.failure("asking for a verdict failed", f), again(False)))
