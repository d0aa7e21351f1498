"""
A simulated cluster for the session rules under faults: real SessionNodes,
Quorums, Replicators and witnesses, each process with a clock of its own
(running at its own rate within the drift bound, frozen while paused), and a
network that carries every call through the same validating PB avatars as
production, but in memory.

Faults: C{kill} (the process is gone: its port refuses connections),
C{restart} (a new, empty incarnation), C{pause}/C{resume} (SIGSTOP/SIGCONT:
its clock stops, what is sent to it waits, then everything overdue runs at
once), and C{cut}/C{heal} (one direction of a link silently drops).
"""

from __future__ import annotations

import itertools
import re
from typing import Dict, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from appliance import cookie
from appliance.config import ClusterConfig
from appliance.core.membership import Membership, Timing
from appliance.replication.link import PeerUnavailable
from appliance.replication.peer import PeerAvatar, localize
from appliance.replication.replicator import Replicator
from appliance.replication.witness import Witness, WitnessAvatar
from appliance.server.node import SessionNode
from appliance.server.quorum import Quorum

from .helpers import cluster_ini

_incarnations = itertools.count(1000)


def witness_sections(names) -> str:
    return "".join(
        f"\n[balancer:{name}]\nlisten = 127.0.0.1:{9100 + i}\nwitness = 127.0.0.1:{9200 + i}\n"
        for i, name in enumerate(names)
    )


class Process:
    """
    What every simulated process has: a clock that runs at C{rate} while
    it is not paused, and an inbox of what reached it while it was.
    """

    def __init__(self, sim: "Sim", name: str, rate: float):
        self.sim = sim
        self.name = name
        self.rate = rate
        self.clock = Clock()
        self.clock.advance(sim.time * rate)
        self.paused_at: Optional[float] = None
        self.inbox: List = []

    @property
    def running(self) -> bool:
        return self.paused_at is None

    def now(self) -> float:
        return self.clock.seconds()

    def later(self, thunk) -> None:
        """
        Run C{thunk} in this process: now, or when it resumes.
        """
        if self.running:
            thunk()
        else:
            self.inbox.append(thunk)


class SimServer(Process):
    def __init__(self, sim: "Sim", name: str, rate: float = 1.0):
        super().__init__(sim, name, rate)
        settings = sim.config.cluster
        self.incarnation = next(_incarnations)
        self.membership = Membership(
            name, self.incarnation, sim.config.node_names, sim.witness_names,
            Timing(settings.lease_time, settings.clock_drift), self.now(),
        )
        self.quorum = Quorum(
            self.clock, self.membership, self.now,
            lambda peer, method, *args: sim.call(self, peer, method, *args),
            lambda peer: sim.linked(name, peer),
            lambda server: defer.succeed(sim.refuses(server)),
            settings.heartbeat_interval,
        )
        call = lambda peer, method, *args: sim.call(self, peer, method, *args)
        self.replicator = Replicator(self.clock, settings, call, lambda: 600)
        self.node = SessionNode(
            self.clock, sim.config, name, now=self.now, call=call,
            connected=lambda peer: sim.linked(name, peer),
            peer_load=lambda peer: len(sim.servers[peer].node.store) if peer in sim.servers else 0,
            send=self.replicator.send, quorum=self.quorum,
        )
        self.links: Set[str] = set()
        # The incarnation each link logged in as: a call sent on a link
        # carries it even if this server restarts before it arrives.
        self.logins: Dict[str, int] = {}
        self.pending: Dict[str, List[defer.Deferred]] = {}
        self.ended = 0

    def avatar(self, caller: "SimServer", incarnation: Optional[int] = None):
        """
        What C{caller}'s calls reach here: its login, as C{incarnation}
        (the one it logged in as on the link a call went out on).
        """
        if incarnation is None:
            incarnation = caller.membership.incarnation
        return PeerAvatar(caller.name, incarnation, self.node, self.sim.config.node_names, self.node.limit)

    # the service's reactions, as SessionServerService has them

    def link_up(self, peer: str) -> None:
        self.links.add(peer)
        self.logins[peer] = self.membership.incarnation
        if peer in self.sim.servers_named:
            self.replicator.hold(peer)
            self.node.peer_up(peer).addBoth(lambda _: self.replicator.release(peer))

    def link_down(self, peer: str) -> None:
        self.links.discard(peer)
        for d in self.pending.pop(peer, []):
            if not d.called:
                d.errback(PeerUnavailable(peer))
        if peer in self.sim.servers_named:
            self.replicator.fail(peer)
            self.node.peer_down(peer)

    def beat(self, voter: str, answer, asked_at: float) -> None:
        if self.quorum.beat(voter, answer, asked_at) is not None:
            self.end()

    def watch(self) -> None:
        if self.quorum.watch() is not None:
            self.end()

    def end(self) -> None:
        self.incarnation = next(_incarnations)
        self.quorum.begin(self.incarnation)
        self.node.reset(self.incarnation)
        for peer in list(self.links):
            self.link_down(peer)
        self.ended += 1


class SimWitness(Process):
    def __init__(self, sim: "Sim", name: str, rate: float = 1.0):
        super().__init__(sim, name, rate)
        settings = sim.config.cluster
        self.witness = Witness(
            sim.config.node_names, settings.lease_time, settings.heartbeat_interval, self.now,
            lambda server: defer.succeed(sim.refuses(server)),
        )

    def avatar(self, caller: SimServer, incarnation: Optional[int] = None):
        if incarnation is None:
            incarnation = caller.membership.incarnation
        return WitnessAvatar(caller.name, incarnation, self.witness)


class Sim:
    """
    C{servers} session servers and C{witnesses} witness balancers.
    C{rates} gives a process's clock rate (default 1.0); C{flat}: no
    server is further from another than the rest (one rack).
    """

    def __init__(
        self, servers=("s1", "s2", "s3"), witnesses=("lb1",), replication="sync", extra="", rates=None, flat=False
    ):
        text, _ = cluster_ini(servers, replication, extra, balancer=witness_sections(witnesses))
        if flat:
            # Every server on a machine of its own in one rack.
            text = re.sub(r"(?m)^rack = r\d+$", "rack = r1", text)
        self.config = ClusterConfig.from_string(text)
        self.settings = self.config.cluster
        self.witness_names = tuple(witnesses)
        self.servers_named = frozenset(servers)
        self.time = 0.0
        self.rates = dict(rates or {})
        self.down: Set[str] = set()
        self.cuts: Set[Tuple[str, str]] = set()
        self.servers: Dict[str, SimServer] = {}
        self.witnesses: Dict[str, SimWitness] = {w: SimWitness(self, w, self.rates.get(w, 1.0)) for w in witnesses}
        for name in servers:
            self.servers[name] = SimServer(self, name, self.rates.get(name, 1.0))
        self.settle()

    # -- the network -------------------------------------------------------

    def process(self, name: str) -> Optional[Process]:
        if name in self.down:
            return None
        return self.servers.get(name) or self.witnesses.get(name)

    def refuses(self, server: str) -> bool:
        return server in self.down

    def reaches(self, a: str, b: str) -> bool:
        """
        Whether packets flow both ways between a and b (TCP needs both).
        """
        return (a, b) not in self.cuts and (b, a) not in self.cuts and a not in self.down and b not in self.down

    def linked(self, a: str, b: str) -> bool:
        return b in self.servers[a].links if a in self.servers else False

    def call(self, caller: SimServer, peer: str, method: str, *args) -> defer.Deferred:
        """
        A PB call from C{caller} on its link to C{peer}: fails at once when
        the link is down (the link layer's job: a cut link times out and is
        cut), waits while C{peer} is paused.
        """
        if peer not in caller.links or not self.reaches(caller.name, peer):
            return defer.fail(PeerUnavailable(peer))
        target = self.process(peer)
        login = caller.logins.get(peer)
        result = defer.Deferred()
        waiting = caller.pending.setdefault(peer, [])
        waiting.append(result)

        def deliver(outcome):
            if result in waiting:
                waiting.remove(result)
            if result.called:
                return
            if isinstance(outcome, _Failed):
                result.errback(outcome.failure)
            else:
                result.callback(outcome)

        def answer(outcome):
            if caller is self.servers.get(caller.name) and caller.name not in self.down:
                caller.later(lambda: deliver(outcome))

        def run():
            if not self.reaches(caller.name, peer):
                answer(_Failed(PeerUnavailable(peer)))
                return
            avatar = target.avatar(caller, login)
            d = defer.maybeDeferred(getattr(avatar, "perspective_" + method), *args)
            d.addCallbacks(answer, lambda f: answer(_Failed(f)))

        target.later(run)
        return result.addErrback(localize)

    # -- time --------------------------------------------------------------

    def step(self, dt: float) -> None:
        self.time += dt
        for p in list(self.servers.values()) + list(self.witnesses.values()):
            if p.name not in self.down and p.running:
                p.clock.advance(dt * p.rate)

    def tick(self) -> None:
        """
        One heartbeat: links notice what changed, leases are renewed,
        witnesses and servers check theirs.
        """
        interval = self.settings.heartbeat_interval
        misses = self.settings.heartbeat_misses
        for name, s in self.servers.items():
            if name in self.down or not s.running:
                continue
            for peer in list(self.servers) + list(self.witnesses):
                if peer == name:
                    continue
                target = self.process(peer)
                ok = (
                    target is not None
                    and self.reaches(name, peer)
                    and (target.running or self.time - target.paused_at < misses * interval)
                )
                if ok and peer not in s.links:
                    if not target.running:
                        continue
                    if peer in self.servers:
                        target.node.peer_seen(name, s.membership.incarnation)
                    else:
                        target.witness.voter.seen(name, s.membership.incarnation, target.now())
                    s.link_up(peer)
                elif not ok and peer in s.links:
                    s.link_down(peer)
        for name, s in list(self.servers.items()):
            if name in self.down or not s.running:
                continue
            for peer in list(s.links):
                target = self.process(peer)
                if target is None or not target.running:
                    continue
                asked_at = s.now()
                answer = target.avatar(s).perspective_renew(s.membership.lease.held)
                s.beat(peer, answer, asked_at)
            s.watch()
        for w in self.witnesses.values():
            if w.name not in self.down and w.running:
                w.witness.check()

    def run(self, seconds: float) -> None:
        """
        Let C{seconds} pass in heartbeats.
        """
        interval = self.settings.heartbeat_interval
        steps = max(1, int(round(seconds / interval)))
        for _ in range(steps):
            self.step(interval)
            self.tick()
            self.step(0)

    def settle(self) -> None:
        self.run(2 * self.settings.lease_time)

    def until(self, d: defer.Deferred, limit: float = 30.0):
        """
        Run until C{d} has a result (at most C{limit} seconds); returns it.
        """
        interval = self.settings.heartbeat_interval
        waited = 0.0
        box = []
        d.addBoth(box.append)
        while not box and waited < limit:
            self.step(0)
            if box:
                break
            self.run(interval)
            waited += interval
        if not box:
            raise AssertionError(f"no result after {limit} simulated seconds")
        return box[0]

    # -- faults ------------------------------------------------------------

    def kill(self, name: str) -> None:
        self.down.add(name)
        dead = self.servers[name]
        dead.paused_at = None
        for s in self.servers.values():
            if s.name != name and name in s.links and s.running:
                s.link_down(name)

    def restart(self, name: str) -> SimServer:
        self.down.discard(name)
        self.servers[name] = SimServer(self, name, self.rates.get(name, 1.0))
        return self.servers[name]

    def pause(self, name: str) -> None:
        p = self.process(name)
        p.paused_at = self.time

    def resume(self, name: str) -> None:
        p = self.process(name)
        gap = self.time - p.paused_at
        p.paused_at = None
        p.clock.advance(gap * p.rate)
        inbox, p.inbox = p.inbox, []
        for thunk in inbox:
            thunk()

    def cut(self, a: str, b: str, both: bool = True) -> None:
        self.cuts.add((a, b))
        if both:
            self.cuts.add((b, a))

    def heal(self) -> None:
        self.cuts.clear()

    def isolate(self, name: str, others=None) -> None:
        for other in others if others is not None else list(self.servers) + list(self.witnesses):
            if other != name:
                self.cut(name, other)

    # -- requests ----------------------------------------------------------

    def open_close(self, name: str, route: cookie.Route, work=None) -> defer.Deferred:
        """
        One request on server C{name}: open, let C{work(data)} change the
        session, close; fires with (handle, outcome) or fails.
        """
        node = self.servers[name].node

        def opened(handle):
            if work is not None:
                work(handle.data)
            return node.close(handle).addCallback(lambda outcome: (handle, outcome))

        return node.open(route).addCallback(opened)

    def request(self, name: str, route: cookie.Route, work=None, limit: float = 30.0):
        """
        L{open_close} run to its end: (handle, outcome), or the Failure.
        """
        return self.until(self.open_close(name, route, work), limit)

    def servable(self, sid: str) -> List[str]:
        """
        The running servers that would serve C{sid} now as its primary.
        """
        out = []
        for name, s in self.servers.items():
            if name in self.down or not s.running:
                continue
            if s.quorum.may_serve() and s.node.store.primary_of(sid) is not None:
                out.append(name)
        return out


class _Failed:
    """
    An answer that is a failure, carried back to the caller.
    """

    def __init__(self, failure):
        self.failure = failure if isinstance(failure, Failure) else Failure(failure)
