"""
How long a /metrics scrape takes with many sessions on a node.

    python3 bench/metrics.py [--sessions 1000000] [--scrapes 30]

A session server (not listening: a memory reactor) holding C{--sessions}
copies, half of them its primaries and half backups of a peer's, of
random sizes, with a balancer and a DNS responder beside it in the same
registry (L{appliance.metrics.registry_for}); then C{generate_latest} of
that registry, the whole answer of C{/metrics}, C{--scrapes} times, with
1,000 sessions first for comparison.  The collectors read counts kept as
the sessions change, so the time should not grow with the sessions.
Target (issue 13): <= 50 ms with 1,000,000 sessions.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = """
[cluster]
name = bench.cluster.test
secret = bench-secret-123
max_sessions = 2000000

[balancer:lb1]
listen = 127.0.0.1:19080

[dns]
listen = 127.0.0.1:19053
zone = cluster.test

[node:s1]
http = 127.0.0.1:19001
replication = 127.0.0.1:19101
machine = m1
rack = r1

[node:s2]
http = 127.0.0.1:19002
replication = 127.0.0.1:19102
machine = m2
rack = r2
"""


def services(sessions: int):
    from twisted.internet import defer
    from twisted.internet.testing import MemoryReactorClock

    from appliance.balancer.service import BalancerService
    from appliance.config import ClusterConfig
    from appliance.core.session import Changes, Full
    from appliance.dns.service import DnsService
    from appliance.server.service import SessionServerService

    cluster = ClusterConfig.from_string(CONFIG)
    reactor = MemoryReactorClock()
    server = SessionServerService(reactor, cluster, "s1")
    store = server.node.store
    rng = random.Random(13)
    for i in range(sessions):
        sid = f"{i:022d}"
        value = b'"' + b"x" * rng.randrange(10, 3000) + b'"'
        if i % 2:
            store.create(sid, Changes({"cart": value}), "s2", 0.0)
        else:
            store.apply(Full(sid, 1, 1, "s2", "s1", 1800.0, 0.0, {"cart": value}), 0.0)
    lb = BalancerService(reactor, cluster, cluster.balancers[0])
    lb.startService()
    dns = DnsService(reactor, cluster, check=lambda front: defer.succeed(True))
    return server, lb, dns


def scrape_times(sessions: int, scrapes: int):
    from prometheus_client import generate_latest

    from appliance.metrics import registry_for

    built = time.perf_counter()
    server, lb, dns = services(sessions)
    built = time.perf_counter() - built
    registry = registry_for([server, lb, dns])
    times = []
    size = 0
    for _ in range(scrapes):
        started = time.perf_counter()
        size = len(generate_latest(registry))
        times.append(1000.0 * (time.perf_counter() - started))
    assert len(server.node.store) == sessions
    return times, size, built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=30)
    args = parser.parse_args()
    if not 1 <= args.sessions <= 5_000_000 or not 1 <= args.scrapes <= 1000:
        parser.error("sessions 1-5,000,000, scrapes 1-1000")
    print(f"metrics scrape benchmark  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
          f"{sys.implementation.name} {sys.version.split()[0]}  cpus {os.cpu_count()}")
    worst = 0.0
    for count in (1000, args.sessions):
        times, size, built = scrape_times(count, args.scrapes)
        worst = statistics.median(times)
        print(f"  {count:>9,} sessions (filled in {built:.1f} s): /metrics {size} bytes, "
              f"median {statistics.median(times):.2f} ms, max {max(times):.2f} ms over {args.scrapes} scrapes")
    verdict = "met" if worst <= 50.0 else "MISSED"
    print(f"  target: a scrape <= 50 ms with {args.sessions:,} sessions (median): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
