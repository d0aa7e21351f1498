"""
The persistent client against HTTP, failover time, and exactly once.

Starts the all-in-one (`twistd -n appliance`: DNS off, one balancer, three
supervised session servers with client ports, replication in sync mode)
on free loopback ports, then:

1. throughput: the cart's "add an item" over one client connection
   (the cart service, C{concurrency} sessions in flight) and over HTTP
   through the balancer (C{POST /cart/items}, as many keep-alive
   connections), alternated for C{--rounds} rounds of C{--seconds} each;
   each session does 40 adds, then a new one starts (carts stay small on
   both paths);
2. failover: C{--trials} times, kill -9 the primary of a session between
   two calls and time from the kill to the next successful call (the
   supervisor restarts the node before the next trial);
3. exactly once: C{--adds} non-idempotent adds from C{--workers} sessions
   while the primary of one of them is killed every C{adds / (kills + 1)}
   adds (at least C{--kills} times, each once the cluster is whole again);
   then every cart is read and checked: every acknowledged add present
   exactly once, nothing present that was neither acknowledged nor
   reported L{OutcomeUnknown}.

    python3 bench/client.py [--seconds 5] [--rounds 2] [--trials 10] [--adds 5000] [--kills 10]

Every phase is bounded in time; the cluster is stopped at the end.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402
from io import BytesIO  # noqa: E402

from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from appliance.client import Client, ClientError, OutcomeUnknown  # noqa: E402
from bench.proc import cpu_seconds  # noqa: E402
from tests.helpers import cluster_ini, free_ports, health, twistd  # noqa: E402

PER_SESSION = 40
USER, PASSWORD = "bench", "bench-password"


class Cluster:
    """
    The all-in-one on free ports, with client ports and the cart service.
    """

    def __init__(self, replication: str):
        lb, witness = free_ports(2)
        text, self.ports = cluster_ini(
            replication=replication,
            balancer=(
                f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nwitness = 127.0.0.1:{witness}\n"
                "health_interval = 250ms\nnew_session_rate = 0\n"
            ),
            apps=(
                f"\n[client:{USER}]\npassword = {PASSWORD}\n"
                "\n[service:cart]\nobject = appliance.demo.cart:Cart\nidempotent = items\n"
            ),
        )
        text = text.replace("[app:cart]\nmount = /cart\nwsgi = appliance.demo.cart:app\n",
                            "[app:cart]\nmount = /cart\nwsgi = appliance.demo.cart:app\nthreads = no\n")
        self.client_ports = dict(zip(sorted(self.ports), free_ports(len(self.ports))))
        for name, port in self.client_ports.items():
            text = text.replace(f"[node:{name}]\n", f"[node:{name}]\nclient = 127.0.0.1:{port}\n")
        self.lb = lb
        self.work = tempfile.mkdtemp(prefix="bench-client-")
        self.config = os.path.join(self.work, "cluster.ini")
        with open(self.config, "w") as f:
            f.write(text)
        self.log = open(os.path.join(self.work, "appliance.log"), "wb")
        self.proc = subprocess.Popen(
            twistd("--config", self.config), cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def health(self, name):
        try:
            return health(self.ports[name][0]) or {}
        except OSError:
            return {}

    def whole(self) -> bool:
        states = [self.health(n) for n in self.ports]
        return all(h.get("status") == "ok" and h.get("peers") and all(h["peers"].values()) for h in states)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(5)
        self.log.close()


def blocking(reactor, f, *args):
    """
    A blocking function (health checks) off the reactor thread.
    """
    from twisted.internet import threads

    return threads.deferToThread(f, *args)


@defer.inlineCallbacks
def wait_whole(reactor, cluster: Cluster, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (yield blocking(reactor, cluster.whole)):
            return
        yield task.deferLater(reactor, 0.1, lambda: None)
    raise SystemExit(f"the cluster did not come back within {seconds:g}s; see {cluster.work}")


# -- throughput ---------------------------------------------------------------


@defer.inlineCallbacks
def client_adds(reactor, client: Client, seconds: float, concurrency: int):
    """
    Adds over the client for C{seconds}; returns adds per second.
    """
    done = [0]
    stop_at = reactor.seconds() + seconds

    @defer.inlineCallbacks
    def worker(k):
        while reactor.seconds() < stop_at:
            session = yield client.open()
            for i in range(PER_SESSION):
                if reactor.seconds() >= stop_at:
                    break
                yield session.call("cart", "add", f"w{k}-{i}")
                done[0] += 1

    start = reactor.seconds()
    yield defer.gatherResults([worker(k) for k in range(concurrency)], consumeErrors=True)
    return done[0] / (reactor.seconds() - start)


@defer.inlineCallbacks
def http_adds(reactor, agent: Agent, url: str, seconds: float, concurrency: int):
    """
    The same adds over HTTP through the balancer; returns adds per second.
    """
    done = [0]
    stop_at = reactor.seconds() + seconds

    @defer.inlineCallbacks
    def worker(k):
        while reactor.seconds() < stop_at:
            cookie = None
            for i in range(PER_SESSION):
                if reactor.seconds() >= stop_at:
                    break
                headers = {b"content-type": [b"application/x-www-form-urlencoded"]}
                if cookie:
                    headers[b"cookie"] = [cookie]
                body = urlencode({"item": f"w{k}-{i}"}).encode()
                response = yield agent.request(b"POST", url, Headers(headers), FileBodyProducer(BytesIO(body)))
                yield readBody(response)
                if response.code != 200:
                    raise SystemExit(f"HTTP add answered {response.code}")
                for value in response.headers.getRawHeaders(b"set-cookie") or []:
                    if value.startswith(b"APPSESSION="):
                        cookie = value.split(b";", 1)[0]
                done[0] += 1

    start = reactor.seconds()
    yield defer.gatherResults([worker(k) for k in range(concurrency)], consumeErrors=True)
    return done[0] / (reactor.seconds() - start)


# -- failover -----------------------------------------------------------------


def pid_of(cluster: Cluster, name: str):
    return cluster.health(name).get("pid")


@defer.inlineCallbacks
def failover_trials(reactor, cluster: Cluster, client: Client, trials: int):
    times = []
    for trial in range(trials):
        yield wait_whole(reactor, cluster)
        session = yield client.open()
        for i in range(3):
            yield session.call("cart", "add", f"t{trial}-{i}")
        primary = session.primary
        pid = yield blocking(reactor, pid_of, cluster, primary)
        os.kill(pid, 9)
        start = time.monotonic()
        count = yield session.call("cart", "add", f"t{trial}-after")
        elapsed = (time.monotonic() - start) * 1000
        if count != 4:
            raise SystemExit(f"trial {trial}: the cart had {count} items after failover, not 4")
        times.append(elapsed)
        print(f"  trial {trial}: killed {primary} (pid {pid}); next call answered by {session.primary} in {elapsed:.1f} ms")
    return times


# -- exactly once -------------------------------------------------------------


@defer.inlineCallbacks
def exactly_once(reactor, cluster: Cluster, client: Client, adds: int, workers: int, kills: int, seconds: float):
    """
    C{adds} adds over C{workers} sessions with C{kills} primary kills;
    returns the checker's findings.
    """
    resent = client.resent
    sessions = []
    for _ in range(workers):
        sessions.append((yield client.open()))
    acknowledged = [set() for _ in range(workers)]
    unknown = [set() for _ in range(workers)]
    failed = [dict() for _ in range(workers)]
    counter = itertools.count()
    every = max(1, adds // (kills + 1))
    kill_at = {every * (k + 1) for k in range(kills)}
    killed = []
    deadline = reactor.seconds() + seconds

    held = [False]

    @defer.inlineCallbacks
    def killer():
        done = 0
        while done < kills and reactor.seconds() < deadline:
            if kill_at and issued[0] >= min(kill_at):
                kill_at.discard(min(kill_at))
                # The adds wait while the cluster heals, so that every
                # kill lands in the middle of the sequence.
                held[0] = True
                yield wait_whole(reactor, cluster)
                victim = sessions[done % workers].primary
                pid = yield blocking(reactor, pid_of, cluster, victim)
                held[0] = False
                yield task.deferLater(reactor, 0.05, lambda: None)
                if pid:
                    os.kill(pid, 9)
                    killed.append((victim, pid, issued[0]))
                done += 1
            yield task.deferLater(reactor, 0.02, lambda: None)

    issued = [0]

    @defer.inlineCallbacks
    def worker(k):
        session = sessions[k]
        while reactor.seconds() < deadline:
            while held[0]:
                yield task.deferLater(reactor, 0.02, lambda: None)
            n = next(counter)
            if n >= adds:
                return
            issued[0] += 1
            item = f"w{k}-{n}"
            try:
                yield session.call("cart", "add", item)
            except OutcomeUnknown:
                unknown[k].add(item)
                continue
            except ClientError as e:
                failed[k][item] = type(e).__name__
                continue
            acknowledged[k].add(item)

    yield defer.gatherResults([killer()] + [worker(k) for k in range(workers)], consumeErrors=True)
    yield wait_whole(reactor, cluster)
    report = {"adds": issued[0], "kills": killed, "resent": client.resent - resent, "acknowledged": 0, "outcome_unknown": 0, "failed": 0,
              "missing": [], "duplicated": [], "unexplained": []}
    for k, session in enumerate(sessions):
        items = yield session.call("cart", "items")
        seen = {}
        for item in items:
            seen[item] = seen.get(item, 0) + 1
        report["acknowledged"] += len(acknowledged[k])
        report["outcome_unknown"] += len(unknown[k])
        report["failed"] += len(failed[k])
        report["missing"] += sorted(i for i in acknowledged[k] if i not in seen)
        report["duplicated"] += sorted(i for i, c in seen.items() if c > 1)
        report["unexplained"] += sorted(i for i in seen if i not in acknowledged[k] and i not in unknown[k])
        report.setdefault("failed_kinds", {}).update(failed[k])
    return report


# -- main ---------------------------------------------------------------------


@defer.inlineCallbacks
def run(reactor, args, cluster: Cluster):
    yield wait_whole(reactor, cluster)
    seeds = [("127.0.0.1", cluster.client_ports[n]) for n in sorted(cluster.client_ports)]
    client = Client(reactor, seeds, USER, PASSWORD, timeout=5.0, failover_time=20.0, down_time=2.0)
    yield client.connect()
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = args.concurrency
    agent = Agent(reactor, pool=pool)
    url = f"http://127.0.0.1:{cluster.lb}/cart/items".encode()
    results = {"client": [], "http": []}
    cost = {"client": [], "http": []}
    yield client_adds(reactor, client, 1.0, args.concurrency)
    yield http_adds(reactor, agent, url, 1.0, args.concurrency)
    pids = []
    for name in sorted(cluster.ports):
        pids.append((yield blocking(reactor, pid_of, cluster, name)))
    print("session servers: " + ", ".join(f"{n} pid {p}" for n, p in zip(sorted(cluster.ports), pids))
          + f"; balancer and supervisor pid {cluster.proc.pid}; logs in {cluster.work}", flush=True)

    def cpu():
        return time.process_time(), cpu_seconds(cluster.proc.pid), sum(cpu_seconds(p) for p in pids)

    @defer.inlineCallbacks
    def measure(kind, phase):
        before, start = cpu(), time.monotonic()
        rate = yield phase
        after, wall = cpu(), time.monotonic() - start
        adds = rate * wall
        results[kind].append(rate)
        cost[kind].append([1000 * (a - b) / adds for a, b in zip(after, before)])

    for r in range(args.rounds):
        yield measure("client", client_adds(reactor, client, args.seconds, args.concurrency))
        yield measure("http", http_adds(reactor, agent, url, args.seconds, args.concurrency))
        print(f"round {r + 1}: client {results['client'][-1]:.0f} adds/s, HTTP via balancer {results['http'][-1]:.0f} adds/s", flush=True)
    yield pool.closeCachedConnections()
    c, h = statistics.median(results["client"]), statistics.median(results["http"])
    print(f"throughput ({args.replication}, {args.concurrency} in flight): client {c:.0f} adds/s, "
          f"HTTP {h:.0f} adds/s, ratio {c / h:.2f}x")
    for kind in ("client", "http"):
        load, top, nodes = (statistics.median(x[i] for x in cost[kind]) for i in range(3))
        print(f"  CPU ms per add, {kind:6}: load generator {load:.3f}, balancer process {top:.3f}, "
              f"session servers {nodes:.3f}; servers + balancer {top + nodes:.3f}")
    if args.trials:
        print("failover:")
        times = yield failover_trials(reactor, cluster, client, args.trials)
        print(f"failover from kill -9 of the primary to the next successful call: median {statistics.median(times):.1f} ms, "
              f"max {max(times):.1f} ms over {len(times)} trials")
    if args.adds:
        yield wait_whole(reactor, cluster)
        print(f"exactly once: {args.adds} adds from {args.workers} sessions, {args.kills} primary kills ...")
        report = yield exactly_once(reactor, cluster, client, args.adds, args.workers, args.kills, args.bound)
        ok = not (report["missing"] or report["duplicated"] or report["unexplained"])
        print(f"  adds {report['adds']}, acknowledged {report['acknowledged']}, OutcomeUnknown {report['outcome_unknown']}, "
              f"other failures {report['failed']} {report.get('failed_kinds', {}) or ''}; "
              f"calls resent after a failure {report['resent']}")
        print(f"  kills {len(report['kills'])}: " + ", ".join(f"{v}@{n}" for v, _, n in report["kills"]))
        print(f"  missing acknowledged: {len(report['missing'])} {report['missing'][:5]}; "
              f"duplicated: {len(report['duplicated'])} {report['duplicated'][:5]}; "
              f"present but neither acknowledged nor OutcomeUnknown: {len(report['unexplained'])} {report['unexplained'][:5]}")
        print("  exactly once: " + ("PASS" if ok and len(report["kills"]) >= args.kills else "FAIL"))
    yield client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replication", default="sync", choices=("sync", "async", "batched"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--adds", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--bound", type=float, default=600.0, help="seconds the exactly-once run may take")
    args = parser.parse_args()
    cluster = Cluster(args.replication)
    try:
        task.react(lambda reactor: run(reactor, args, cluster))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
