"""
Join and rebalance: how soon a restarted server holds its share again.

Starts three session servers (one rack: an even spread is what placement
asks for) and a plugin-mode balancer as real processes, creates
--sessions sessions straight on the servers (round robin), runs a few
writer clients through the balancer, then:

1. kill -9 one server, wait until its sessions are promoted elsewhere,
   start it again, and print its share of the cluster's backups and
   primaries every few seconds for --window seconds (target: 33 % +- 10 %
   of the backups within 2 minutes);
2. a rolling restart: SIGTERM each server in turn (it drains), start it
   again, and wait until it holds 30 % of the primaries and of the
   backups before the next;
   print how far from even primaries and backups are at the end (target:
   within 10 %).

Writes acknowledged, error answers (the kill -9 included: a write in
flight to the killed server is answered 502) and acknowledged writes lost
are printed too.

    python3 bench/rebalance.py [--sessions 20000] [--rate 200] [--window 120]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.rolling import safe_health, wait  # noqa: E402
from tests.helpers import cluster_ini, free_ports, http, twistd  # noqa: E402
from tests.test_e2e_drain import Writers  # noqa: E402

NAMES = ("s1", "s2", "s3")


class Cluster:
    def __init__(self, rate: float):
        lb, witness = free_ports(2)
        section = (
            f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nwitness = 127.0.0.1:{witness}\nmode = plugin\nnode = s1\n"
            "health_interval = 200ms\nhealth_rise = 1\ndown_time = 1s\nnew_session_rate = 0\n"
        )
        text, self.ports = cluster_ini(NAMES, "sync", f"rebalance_rate = {rate:g}/s\nmax_sessions = 1000000",
                                       balancer=section)
        # One rack; and the shipped replication_timeout, not the tests' 2 s.
        text = re.sub(r"(?m)^rack = r\d+$", "rack = r1", text).replace("replication_timeout = 2s", "replication_timeout = 5s")
        self.work = tempfile.mkdtemp(prefix="rebalance-")
        self.config = os.path.join(self.work, "cluster.ini")
        with open(self.config, "w") as f:
            f.write(text)
        self.base = f"http://127.0.0.1:{lb}"
        self.procs = {}

    def start(self, key, *args):
        log = open(os.path.join(self.work, f"{key}.log"), "ab")
        self.procs[key] = subprocess.Popen(
            twistd("--config", self.config, *args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_server(self, name):
        self.start(name, "--node", name, "--roles", "server")

    def linked(self, name):
        h = safe_health(self.ports[name][0])
        return h.get("status") == "ok" and all(h.get("peers", {}).get(o) for o in NAMES if o != name)

    def counts(self, up=NAMES):
        """
        Each server's (primaries, backups), asking again (for 30 s at
        most) while one of C{up} does not answer: a loaded machine makes
        a health check time out now and then.
        """
        deadline = time.monotonic() + 30.0
        while True:
            out, missing = {}, []
            for name in NAMES:
                h = safe_health(self.ports[name][0])
                if not h and name in up:
                    missing.append(name)
                out[name] = (h.get("primaries", 0), h.get("sessions", 0) - h.get("primaries", 0))
            if not missing or time.monotonic() > deadline:
                return out
            time.sleep(0.2)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def status(url):
    try:
        return http("GET", url)[0]
    except OSError:
        return None


def create(cluster: Cluster, n: int) -> None:
    urls = [f"http://127.0.0.1:{cluster.ports[name][0]}/cart/items" for name in NAMES]

    def one(i):
        for _ in range(5):
            try:
                status, _, _ = http("POST", urls[i % 3], {"item": f"first{i}"}, timeout=10.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"could not create session {i}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def share(counts, name):
    primaries = sum(p for p, _ in counts.values())
    backups = sum(b for _, b in counts.values())
    p, b = counts[name]
    return 100.0 * p / max(primaries, 1), 100.0 * b / max(backups, 1)


def spread(counts):
    """
    How far the most distant node is from even, in % of even, for
    primaries and for backups.
    """
    out = []
    for i in (0, 1):
        values = [c[i] for c in counts.values()]
        mean = sum(values) / len(values)
        out.append(100.0 * max(abs(v - mean) for v in values) / max(mean, 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=200.0, help="rebalance_rate, sessions a second per server")
    parser.add_argument("--window", type=float, default=120.0, help="seconds to watch the restarted server")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    cluster = Cluster(args.rate)
    writers = None
    ok = True
    try:
        for name in NAMES:
            cluster.start_server(name)
        cluster.start("lb1", "--node", "s1", "--roles", "balancer")
        for name in NAMES:
            wait(lambda: cluster.linked(name), 60, f"{name} to link", cluster.work)
        wait(lambda: status(cluster.base + "/_appliance/lb-health") == 200, 60, "the balancer", cluster.work)
        began = time.monotonic()
        create(cluster, args.sessions)
        print(f"{args.sessions} sessions created in {time.monotonic() - began:.1f} s; rebalance_rate {args.rate:g}/s;"
              f" {args.writers} writers through the balancer")
        writers = Writers(cluster.base, args.writers)
        writers.start()
        total = args.sessions
        wait(lambda: sum(p for p, _ in cluster.counts().values()) >= total, 60, "every session counted", cluster.work)
        print("before:", cluster.counts())

        # 1. kill -9 and restart s3
        cluster.procs["s3"].kill()
        cluster.procs["s3"].wait(10)
        wait(lambda: sum(p for p, _ in cluster.counts(up=("s1", "s2")).values()) >= total, 60, "failover", cluster.work)
        cluster.start_server("s3")
        wait(lambda: cluster.linked("s3"), 60, "s3 to come back", cluster.work)
        back = time.monotonic()
        print("kill -9 s3, restarted; its share of primaries / backups (target 33 % +- 10 % of backups in 120 s):")
        reached = None
        next_print = 0.0
        while time.monotonic() - back < args.window:
            elapsed = time.monotonic() - back
            p, b = share(cluster.counts(), "s3")
            if reached is None and 23.33 <= b <= 43.33:
                reached = elapsed
            if elapsed >= next_print:
                print(f"  {elapsed:5.1f} s: primaries {p:4.1f} %  backups {b:4.1f} %")
                next_print += 5.0
            if abs(b - 33.33) < 1.0 and abs(p - 33.33) < 1.0:
                print(f"  {elapsed:5.1f} s: primaries {p:4.1f} %  backups {b:4.1f} % (even)")
                break
            time.sleep(0.5)
        p, b = share(cluster.counts(), "s3")
        print(f"  backups within 33 % +- 10 % after {reached:.1f} s" if reached is not None
              else f"  backups NOT within 33 % +- 10 % after {args.window:.0f} s")
        ok = ok and reached is not None and reached <= 120.0

        # 2. rolling restart by SIGTERM
        print("rolling restart (SIGTERM each in turn, the next once it is back to 30 % of the primaries and backups):")
        for name in NAMES:
            began = time.monotonic()
            cluster.procs[name].terminate()
            cluster.procs[name].wait(60)
            cluster.start_server(name)
            wait(lambda: cluster.linked(name), 60, f"{name} to come back", cluster.work)
            wait(lambda: min(share(cluster.counts(), name)) >= 30.0, 300, f"{name} to get its share", cluster.work)
            p, b = share(cluster.counts(), name)
            print(f"  {name}: drained, restarted and back to {p:.1f} % of the primaries and {b:.1f} % of the backups"
                  f" in {time.monotonic() - began:.1f} s")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and max(spread(cluster.counts())) > 5.0:
            time.sleep(1.0)
        counts = cluster.counts()
        sp, sb = spread(counts)
        print("after: " + ", ".join(f"{n} {p} primaries / {b} backups" for n, (p, b) in counts.items()))
        print(f"  furthest from even: primaries {sp:.1f} %, backups {sb:.1f} % (target <= 10 %)")
        ok = ok and sp <= 10.0 and sb <= 10.0
        writers.finish()
        lost = writers.lost()
        errors = collections.Counter(e[1] if len(e) > 2 else e[1].split("(")[0] for e in writers.errors)
        print(f"writers: {writers.writes()} writes acknowledged, {sum(errors.values())} error answers {dict(errors) or ''},"
              f" {len(lost)} acknowledged writes lost")
        ok = ok and not lost
    finally:
        if writers is not None:
            writers.finish()
        cluster.stop()
    if args.keep or not ok:
        print(f"logs in {cluster.work}")
    else:
        shutil.rmtree(cluster.work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
